//! Property test: random operation sequences on several streams, ordered across streams with
//! events the way an engine orders them, give exactly what a sequential model of the same
//! operations gives.

use ascend_hal::prelude::*;
use hal_mock::{CpuBackend, CpuEvent, CpuStream, DeviceProfile};
use proptest::prelude::*;

const BUFS: usize = 4;
const STREAMS: usize = 3;
const LEN: usize = 512;

#[derive(Debug, Clone)]
enum Op {
    Upload {
        stream: usize,
        buf: usize,
        seed: u8,
    },
    Copy {
        stream: usize,
        src: usize,
        dst: usize,
        src_off: usize,
        dst_off: usize,
        len: usize,
    },
    Memset {
        stream: usize,
        buf: usize,
        off: usize,
        len: usize,
        value: u8,
    },
    Download {
        stream: usize,
        buf: usize,
    },
    /// Holds a stream busy for a while, so that streams really run out of step and a missing
    /// or ignored wait shows up as wrong data.
    Stall {
        stream: usize,
        micros: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0..STREAMS;
    let b = 0..BUFS;
    prop_oneof![
        (s.clone(), b.clone(), any::<u8>()).prop_map(|(stream, buf, seed)| Op::Upload {
            stream,
            buf,
            seed
        }),
        (s.clone(), b.clone(), 1..BUFS, 0..LEN, 0..LEN, 0..=LEN).prop_map(
            |(stream, src, step, a, c, len)| {
                let len = len.min(LEN - a).min(LEN - c);
                Op::Copy {
                    stream,
                    src,
                    dst: (src + step) % BUFS,
                    src_off: a,
                    dst_off: c,
                    len,
                }
            }
        ),
        (s.clone(), b.clone(), 0..LEN, 0..=LEN, any::<u8>()).prop_map(
            |(stream, buf, off, len, value)| Op::Memset {
                stream,
                buf,
                off,
                len: len.min(LEN - off),
                value
            }
        ),
        (s.clone(), b).prop_map(|(stream, buf)| Op::Download { stream, buf }),
        (s, 0..400u64).prop_map(|(stream, micros)| Op::Stall { stream, micros }),
    ]
}

fn upload_data(seed: u8) -> Vec<u8> {
    (0..LEN)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Per buffer: the events recorded after each access since its last write, with their stream.
/// A new access waits for all of them from other streams (write-after-read and read-after-write
/// hazards alike), exactly what an engine must do.
struct Hazards {
    since_write: Vec<Vec<(usize, CpuEvent)>>,
}

impl Hazards {
    fn before(&self, streams: &[CpuStream], stream: usize, bufs: &[usize]) {
        for &b in bufs {
            for (s, event) in &self.since_write[b] {
                if *s != stream {
                    streams[stream].wait(event).unwrap();
                }
            }
        }
    }

    fn after(&mut self, streams: &[CpuStream], stream: usize, read: Option<usize>, written: usize) {
        let event = streams[stream].record_new_event().unwrap();
        self.since_write[written] = vec![(stream, event)];
        if let Some(r) = read {
            let event = streams[stream].record_new_event().unwrap();
            self.since_write[r].push((stream, event));
        }
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let backend = CpuBackend::builder()
        .device(DeviceProfile::custom("Ascend910B4", 16 << 20))
        .build();
    let device = backend.device(0).unwrap();
    let streams: Vec<CpuStream> = (0..STREAMS).map(|_| device.new_stream().unwrap()).collect();
    let mut bufs: Vec<DeviceBuffer<CpuBackend, u8>> = (0..BUFS)
        .map(|_| DeviceBuffer::zeros(&streams[0], LEN).unwrap())
        .collect();
    streams[0].synchronize().unwrap();
    let mut model = vec![vec![0u8; LEN]; BUFS];
    let mut hazards = Hazards {
        since_write: (0..BUFS).map(|_| Vec::new()).collect(),
    };
    // Pinned sources stay alive until the end so that uploads really overlap other work.
    let mut uploads = Vec::new();

    for op in ops {
        match *op {
            Op::Upload { stream, buf, seed } => {
                let data = upload_data(seed);
                let host = PinnedBuffer::from_slice(&device, &data).unwrap();
                hazards.before(&streams, stream, &[buf]);
                streams[stream].copy_h2d(&host, &mut bufs[buf]).unwrap();
                hazards.after(&streams, stream, None, buf);
                model[buf] = data;
                uploads.push(host);
            }
            Op::Copy {
                stream,
                src,
                dst,
                src_off,
                dst_off,
                len,
            } => {
                hazards.before(&streams, stream, &[src, dst]);
                let (s, d) = if src < dst {
                    let (lo, hi) = bufs.split_at_mut(dst);
                    (&lo[src], &mut hi[0])
                } else {
                    let (lo, hi) = bufs.split_at_mut(src);
                    (&hi[0], &mut lo[dst])
                };
                streams[stream]
                    .copy_d2d(
                        &s.slice(src_off..src_off + len).unwrap(),
                        &mut d.slice_mut(dst_off..dst_off + len).unwrap(),
                    )
                    .unwrap();
                hazards.after(&streams, stream, Some(src), dst);
                let chunk = model[src][src_off..src_off + len].to_vec();
                model[dst][dst_off..dst_off + len].copy_from_slice(&chunk);
            }
            Op::Memset {
                stream,
                buf,
                off,
                len,
                value,
            } => {
                hazards.before(&streams, stream, &[buf]);
                streams[stream]
                    .memset(&mut bufs[buf].slice_mut(off..off + len).unwrap(), value)
                    .unwrap();
                hazards.after(&streams, stream, None, buf);
                model[buf][off..off + len].fill(value);
            }
            Op::Stall { stream, micros } => {
                streams[stream]
                    .enqueue_host_task("stall", move || {
                        std::thread::sleep(std::time::Duration::from_micros(micros));
                        Ok(())
                    })
                    .unwrap();
            }
            Op::Download { stream, buf } => {
                hazards.before(&streams, stream, &[buf]);
                let got = streams[stream].clone_to_host(&bufs[buf]).unwrap();
                prop_assert_eq!(&got, &model[buf], "mid-sequence download of buffer {}", buf);
            }
        }
    }
    for s in &streams {
        s.synchronize().unwrap();
    }
    for (b, buf) in bufs.iter().enumerate() {
        let got = streams[b % STREAMS].clone_to_host(buf).unwrap();
        prop_assert_eq!(&got, &model[b], "final contents of buffer {}", b);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn streams_with_events_match_a_sequential_model(ops in prop::collection::vec(op(), 1..80)) {
        run(&ops)?;
    }
}
