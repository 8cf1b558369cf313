//! The quantized GEMM on Intel AMX (Sapphire Rapids and later), for batches of activation rows
//! (prefill): the same bits as the AVX2/VNNI loop in [`qdot`](crate::qdot), less work per row.
//!
//! One `tdpbsud` multiplies a tile of up to 16 activation rows by 32 values of 16 weight
//! columns (8192 multiply-adds). The weights stay in the CPU backend's
//! [`interleaved`](crate::interleaved) layout; for each panel of 16 columns this module
//! transposes each group's values into one tile per block (`[8 quads][16 columns][4 bytes]`,
//! nibbles widened to bytes) and its scales into vectors of 16, once per panel for all the
//! call's rows. A tile product gives one block's exact integer sums for 16 columns and every
//! row; the scaling that follows is the VNNI loop's, lane for lane. The rows come from an
//! [`ActMatrix`] made once per GEMM.
//!
//! Measured on the 2-core Sapphire Rapids VM: a product alone takes about 3 ns, with its two
//! tile loads and its tile store about 11 ns at 8 rows (a tile store of 8 rows alone 8 ns),
//! and twice that when both cores run products at once (they share one AMX unit);
//! `ldtilecfg` takes 70 ns and a 16-lane `vpgatherdd` about 9 ns (so the panels are
//! transposed with permutes, not gathered); tile rows that cross cache lines load at half
//! speed. So AMX pays from about 12 rows ([`qdot`](crate::qdot)'s `AMX_ROWS`): a 1536 × 576
//! `Q4_1` GEMM took 104 µs against the VNNI loop's 139 at 16 rows, 225 against 315 at 32 and
//! 2.7 ms against 3.5-5 at 512, but 75-80 µs against 65-70 at 8.
//!
//! # Same bits as the VNNI loop
//!
//! The VNNI loop keeps 8 partial sums per (row, column): lane `j` adds blocks `j, j + 8, …`
//! (each `fma(sum, d_w · d_x, acc)` then, for `Q4_x`, `fma(m_w, s_x, acc)`), then the last
//! partial group's chunks of 4, 2 and 1 blocks (each block over `8/c` lanes: lane `p·8/c + r`
//! adds the quads `q ≡ r (mod 8/c)` of the chunk's block `p`, and only lane `p·8/c` its minimum),
//! and finally adds the lanes as `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`. This
//! module runs the same updates, lane by lane, with 16 columns to a vector instead of 8 lanes:
//! every integer sum is exact in both, and each `f32` operation takes the same operands in the
//! same order. A tail lane's sum of some of a block's quads is the tile product with the other
//! quads' rows of the weight tile zeroed.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

use crate::interleaved;
use crate::qdot::{chunks, ActMatrix, ActRow, GROUP};
use crate::quant::{QuantFormat, BLOCK};

/// Weight columns per tile (a tile row is 64 bytes: 16 columns of 4 bytes, or 16 `i32`).
const PANEL: usize = crate::qdot::AMX_PANEL;

/// Activation rows per tile, at most (what `ActMatrix` pads its rows to).
const TILE_ROWS: usize = crate::qdot::AMX_TILE_ROWS;

/// Bytes of one block's weight tile: 8 rows (quads) of 64 bytes.
const TILE_BYTES: usize = 8 * 64;

/// Whether this thread may run [`columns`]: the CPU has AMX-TILE and AMX-INT8 (and the
/// AVX-512 the scaling uses), Linux granted the process the tile data state (`arch_prctl(
/// ARCH_REQ_XCOMP_PERM)`, asked once), and neither `ASCEND_KERNELS_NO_AMX` (which keeps the
/// VNNI loop, to compare the two on one machine) nor `ASCEND_KERNELS_NO_AVX512` is set. Read
/// once.
pub(crate) fn available() -> bool {
    static AMX: OnceLock<bool> = OnceLock::new();
    *AMX.get_or_init(|| {
        // CPUID leaf 7, sub-leaf 0 (where the CPU has it): EDX bit 24 is AMX-TILE, bit 25
        // AMX-INT8.
        let leaf = (__cpuid(0).eax >= 7).then(|| __cpuid_count(7, 0).edx);
        let tiles = leaf.is_some_and(|edx| edx & (1 << 24) != 0 && edx & (1 << 25) != 0);
        tiles
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
            && std::env::var_os("ASCEND_KERNELS_NO_AMX").is_none()
            && crate::simd::allows_avx512()
            && request_tile_state()
    })
}

/// Asks Linux for the AMX tile data state (XSAVE feature 18) for the whole process; without
/// it the first tile instruction faults. Other systems: no.
fn request_tile_state() -> bool {
    #[cfg(target_os = "linux")]
    {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: the arch_prctl system call with ARCH_REQ_XCOMP_PERM takes two integers and
        // touches no memory of ours; the syscall instruction clobbers rcx and r11, declared.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// `LDTILECFG`'s 64-byte operand (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// Tiles 0 and 1: sums, `rows` × 16 `i32`; 2 and 3: activations, `rows` × 32 bytes; 4 and
    /// 5: weights, 8 × 64 bytes. Two of each, so one block's product can run while the
    /// previous one's sums are scaled.
    fn for_rows(rows: usize) -> Self {
        let mut c = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..2 {
            (c.rows[t], c.colsb[t]) = (rows as u8, 64);
            (c.rows[2 + t], c.colsb[2 + t]) = (rows as u8, BLOCK as u16);
            (c.rows[4 + t], c.colsb[4 + t]) = (8, 64);
        }
        c
    }
}

/// 64 bytes on a cache line of their own: tile rows that cross lines load at half speed.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A panel's weights, unpacked once for all the call's activation rows.
#[derive(Default)]
struct Panel {
    /// Each block's tile ([`TILE_BYTES`]), blocks in order, then the tail's masked tiles.
    tiles: Vec<Line>,
    /// Each block's 16 scales `d_w`, then the tail lanes' (one vector of 16 per entry).
    dw: Vec<f32>,
    /// Each block's 16 minima (`Q4_0`: `−8·d_w`), then the tail lanes' (0 where a lane does not
    /// add its block's minimum).
    mw: Vec<f32>,
}

/// Per thread: the panel, the updates and the ring of tile sums.
#[derive(Default)]
struct Scratch {
    panel: Panel,
    /// Every lane's updates ([`updates`]).
    updates: Vec<(usize, usize, usize)>,
    ring: Option<Box<Ring>>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Computes `o[r * (c1 - c0) + c - c0]` as [`qdot::columns`](crate::qdot::columns) does, for
/// the columns `c0 .. c0 + 16·p` (whole panels) and every row; returns how many columns that
/// is (the caller runs the rest).
///
/// # Safety
/// [`available`] returned true; `f` is `Q8_0`, `Q4_0` or `Q4_1` in the interleaved layout;
/// the lengths are as `qdot::columns` checks them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
pub(crate) unsafe fn columns(
    f: QuantFormat,
    w: &[u8],
    row_bytes: usize,
    (c0, c1): (usize, usize),
    rows: &[ActRow<'_>],
    matrix: Option<&ActMatrix>,
    o: &mut [f32],
) -> usize {
    let blocks = row_bytes / f.block_bytes();
    let panels = (c1 - c0) / PANEL;
    if panels == 0 || blocks == 0 || rows.is_empty() {
        return 0;
    }
    // Q4_0 and Q4_1 are unsigned nibbles with a minimum per block (Q4_0's is −8·d); Q8_0 is
    // signed bytes without one.
    let nibbles = f != QuantFormat::Q8_0;
    let m = rows.len();
    SCRATCH.with_borrow_mut(|s| {
        let made;
        let matrix = match matrix {
            Some(mx) => mx,
            None => {
                made = ActMatrix::new(rows);
                &made
            }
        };
        let (acts, stride) = matrix.values();
        let (table, step) = matrix.by_block();
        updates(blocks, &mut s.updates);
        let width = c1 - c0;
        let ring = s
            .ring
            .get_or_insert_with(|| Box::new(Ring([[[0; PANEL]; SLOT_ROWS]; RING])));
        let mut configured = 0;
        for p in 0..panels {
            let c = c0 + p * PANEL;
            // SAFETY: columns c..c + 16 are whole rows of `w` (c + 16 <= c1, this function's
            // contract), in the interleaved layout of `f`.
            unsafe { unpack_panel(f, &w[c * row_bytes..], row_bytes, blocks, &mut s.panel) };
            let mut r0 = 0;
            while r0 < m {
                let n = (m - r0).min(TILE_ROWS);
                if n != configured {
                    let config = TileConfig::for_rows(n);
                    // SAFETY: `config` is a valid palette-1 configuration (at most 16 rows of
                    // at most 64 bytes), 64-byte aligned; AMX is available (this function's
                    // contract).
                    unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
                    configured = n;
                }
                let tile = Tile {
                    acts: acts.wrapping_add(r0 * stride),
                    stride,
                    rows: n,
                    scales: &table[r0..],
                    sums: &table[blocks * step + r0..],
                    step,
                    o: (o.as_mut_ptr(), width, r0, c - c0),
                };
                // SAFETY: AMX is available and configured for n rows; the matrix's rows
                // r0..r0 + n are `stride` bytes apart with a weight row's values each (made
                // from `rows`, or checked so by `qdot::columns`); `o` holds m × width values.
                unsafe {
                    let a = (&s.panel, &s.updates[..], &mut **ring);
                    match (n, nibbles) {
                        (1..=4, true) => tile.run::<4, true>(a),
                        (5..=8, true) => tile.run::<8, true>(a),
                        (_, true) => tile.run::<16, true>(a),
                        (1..=4, false) => tile.run::<4, false>(a),
                        (5..=8, false) => tile.run::<8, false>(a),
                        (_, false) => tile.run::<16, false>(a),
                    }
                }
                r0 += n;
            }
        }
        // SAFETY: releases this thread's tile state (AMX is available: this function's
        // contract); no tile data is live.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    });
    panels * PANEL
}

/// One tile of activation rows against one panel.
struct Tile<'a> {
    /// Row 0's quantized values; row `i`'s are `stride` bytes on.
    acts: *const i8,
    stride: usize,
    /// Rows in this tile (at most 16).
    rows: usize,
    /// Block `b`'s scale of row `i` is `scales[b · step + i]`, its sum `sums[b · step + i]`.
    scales: &'a [f32],
    sums: &'a [f32],
    step: usize,
    /// The output, its row length, this tile's first row and the panel's first column in it.
    o: (*mut f32, usize, usize, usize),
}

impl Tile<'_> {
    /// Runs the panel's updates lane by lane, `R` (4, 8 or 16, at least the tile's rows)
    /// accumulators of 16 columns, and writes the lanes' sums to the output.
    ///
    /// # Safety
    /// As [`columns`]: AMX available and configured for this tile's rows, the rows'
    /// activations readable as the fields say.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn run<const R: usize, const NIBBLES: bool>(
        &self,
        (panel, updates, ring): (&Panel, &[(usize, usize, usize)], &mut Ring),
    ) {
        let n = self.rows;
        debug_assert!(n <= R);
        let mut lanes = [[_mm512_setzero_ps(); R]; GROUP];
        let mut acc = [_mm512_setzero_ps(); R];
        let mut lane = 0;
        for u in 0..updates.len() + AHEAD {
            if let Some(&(_, tile, block)) = updates.get(u) {
                // SAFETY: the block's activations are 32 bytes at 32·block of each of the n
                // rows, `stride` apart (this function's contract); the weight tile is 512
                // bytes of `panel.tiles`; each ring slot holds 16 rows of 64 bytes.
                unsafe {
                    self.product::<NIBBLES>(
                        u % 2 == 1,
                        self.acts.add(block * BLOCK),
                        (panel.tiles.as_ptr() as *const u8).add(tile * TILE_BYTES),
                        ring.0[u % RING].as_mut_ptr() as *mut i32,
                    )
                };
            }
            let Some(v) = u.checked_sub(AHEAD) else {
                continue;
            };
            let (l, vector, block) = updates[v];
            if l != lane {
                lanes[lane] = acc;
                acc = [_mm512_setzero_ps(); R];
                lane = l;
            }
            let sums = &ring.0[v % RING];
            let at = vector * PANEL;
            let (dw, mw) = (&panel.dw[at..at + PANEL], &panel.mw[at..at + PANEL]);
            // SAFETY: 16 floats each, just sliced.
            let (dw, mw) = unsafe { (_mm512_loadu_ps(dw.as_ptr()), _mm512_loadu_ps(mw.as_ptr())) };
            // All R rows, unrolled (rows past the tile's scale stale sums by zeros, unused).
            let (dx, sx) = (
                &self.scales[block * self.step..][..R],
                &self.sums[block * self.step..][..R],
            );
            for m in 0..R {
                // SAFETY: row m of the slot is 16 i32 (m < 16).
                let s = unsafe { _mm512_loadu_si512(sums[m].as_ptr() as *const _) };
                let a = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(s),
                    _mm512_mul_ps(dw, _mm512_set1_ps(dx[m])),
                    acc[m],
                );
                acc[m] = if NIBBLES {
                    _mm512_fmadd_ps(mw, _mm512_set1_ps(sx[m]), a)
                } else {
                    a
                };
            }
        }
        lanes[lane] = acc;
        let (o, width, r0, col) = self.o;
        for m in 0..n {
            let l = |j: usize| lanes[j][m];
            let v = _mm512_add_ps(
                _mm512_add_ps(_mm512_add_ps(l(0), l(4)), _mm512_add_ps(l(2), l(6))),
                _mm512_add_ps(_mm512_add_ps(l(1), l(5)), _mm512_add_ps(l(3), l(7))),
            );
            // SAFETY: row r0 + m < the call's rows and columns col..col + 16 < width of the
            // output (`columns`' contract).
            unsafe { _mm512_storeu_ps(o.add((r0 + m) * width + col), v) };
        }
    }

    /// Tile product of one block: `sums[r][n] = Σ_k acts[r][k] · weights[k][n]` for this tile's
    /// rows (unsigned weight bytes if `NIBBLES`, signed otherwise), with the second set of
    /// tile registers if `odd` (so consecutive blocks overlap).
    ///
    /// # Safety
    /// AMX available and configured for this tile's rows; 32 bytes readable at `acts +
    /// i·stride` for each row `i`, a weight tile at `b`, and the rows' sums writable at `sums`.
    #[inline(always)]
    unsafe fn product<const NIBBLES: bool>(
        &self,
        odd: bool,
        acts: *const i8,
        b: *const u8,
        sums: *mut i32,
    ) {
        macro_rules! product {
            ($op:literal, $c:literal, $a:literal, $b:literal) => {
                // SAFETY: this function's contract; the tiles used are the ones configured.
                unsafe {
                    asm!(
                        concat!("tilezero ", $c),
                        concat!("tileloadd ", $a, ", [{acts} + {stride} * 1]"),
                        concat!("tileloadd ", $b, ", [{b} + {row} * 1]"),
                        concat!($op, " ", $c, ", ", $a, ", ", $b),
                        concat!("tilestored [{sums} + {row} * 1], ", $c),
                        acts = in(reg) acts,
                        stride = in(reg) self.stride,
                        b = in(reg) b,
                        row = in(reg) 64usize,
                        sums = in(reg) sums,
                        options(nostack),
                    )
                }
            };
        }
        match (NIBBLES, odd) {
            (true, false) => product!("tdpbsud", "tmm0", "tmm2", "tmm4"),
            (true, true) => product!("tdpbsud", "tmm1", "tmm3", "tmm5"),
            (false, false) => product!("tdpbssd", "tmm0", "tmm2", "tmm4"),
            (false, true) => product!("tdpbssd", "tmm1", "tmm3", "tmm5"),
        }
    }
}

/// Updates whose products run before the first one's sums are scaled, so that a product does
/// not wait behind the scaling of the one before it (2, 4 and 6 measured the same on the VM).
const AHEAD: usize = 4;

/// Slots of tile sums in the [`Ring`] (more than [`AHEAD`]).
const RING: usize = 8;

/// Rows of a [`Ring`] slot: a tile's 16, and one more so that the slot being stored and the
/// one being scaled ([`AHEAD`] slots apart) are not a multiple of 4 KiB apart, where a load can
/// wait on an unrelated store (4K aliasing; on the VM it made no measurable difference).
const SLOT_ROWS: usize = TILE_ROWS + 1;

/// Tile sums in flight: per slot, 16 rows of 16 `i32` (and a spare), on cache lines of their
/// own.
#[repr(C, align(64))]
struct Ring([[[i32; PANEL]; SLOT_ROWS]; RING]);

/// `vpermt2d` indices of the three steps of [`transpose`], two per step (see there).
const STEPS: [[[i32; 16]; 2]; 3] = {
    let mut idx = [[[0i32; 16]; 2]; 3];
    let mut h = 0;
    while h < 2 {
        let mut p = 0;
        while p < 16 {
            // Step 1: position 4·jj + nn holds (column 4s + nn, dword 4h + jj).
            let (jj, nn) = (p / 4, p % 4);
            idx[0][h][p] = if nn < 2 {
                8 * nn + 4 * h + jj
            } else {
                16 + 8 * (nn - 2) + 4 * h + jj
            } as i32;
            // Step 2: position 8·jj + nn holds (column 8u + nn, dword 4h' + 2h + jj), from
            // step 1's vectors for columns 8u.. and 8u + 4.. (dwords 4h'..4h' + 4).
            let (jj, nn) = (p / 8, p % 8);
            idx[1][h][p] = if nn < 4 {
                4 * (2 * h + jj) + nn
            } else {
                16 + 4 * (2 * h + jj) + nn - 4
            } as i32;
            // Step 3: position n holds (column n, dword 4h'' + 2h' + h), from step 2's
            // vectors for columns 0.. and 8.. (two dwords each).
            idx[2][h][p] = if p < 8 { 8 * h + p } else { 16 + 8 * h + p - 8 } as i32;
            p += 1;
        }
        h += 1;
    }
    idx
};

/// Transposes 16 columns' 8 dwords (`z[t]` holds column `2t`'s in its low half, `2t + 1`'s
/// in its high half) into 8 vectors of 16 columns (`out[j][n]` = dword `j` of column `n`): three
/// steps of 8 two-source permutes.
///
/// # Safety
/// AVX-512 F.
#[inline(always)]
unsafe fn transpose(z: [__m512i; 8]) -> [__m512i; 8] {
    // SAFETY: loads of the constant index arrays (16 i32 each) and register arithmetic under
    // AVX-512 F (this function's contract).
    unsafe {
        let idx = |s: usize, h: usize| _mm512_loadu_si512(STEPS[s][h].as_ptr() as *const _);
        let p =
            |a: __m512i, s: usize, h: usize, b: __m512i| _mm512_permutex2var_epi32(a, idx(s, h), b);
        // one[s][h]: columns 4s..4s + 4, dwords 4h..4h + 4.
        let one: [[__m512i; 2]; 4] =
            std::array::from_fn(|s| std::array::from_fn(|h| p(z[2 * s], 0, h, z[2 * s + 1])));
        // two[u][h'][h]: columns 8u..8u + 8, dwords 4h' + 2h, +1.
        let two: [[[__m512i; 2]; 2]; 2] = std::array::from_fn(|u| {
            std::array::from_fn(|hh| {
                std::array::from_fn(|h| p(one[2 * u][hh], 1, h, one[2 * u + 1][hh]))
            })
        });
        std::array::from_fn(|j| p(two[0][j / 4][j / 2 % 2], 2, j % 2, two[1][j / 4][j / 2 % 2]))
    }
}

/// The 8 dwords at byte `at` of each of 16 rows `row_bytes` apart from `w`, transposed
/// ([`transpose`]): `out[j][n]` is dword `j` of row `n`.
///
/// # Safety
/// AVX-512 F; 32 bytes readable at `w + n·row_bytes + at` for `n < 16`.
#[inline(always)]
unsafe fn columns_dwords(w: *const u8, row_bytes: usize, at: usize) -> [__m512i; 8] {
    // SAFETY: each load reads the 32 bytes this function's contract makes readable.
    unsafe {
        let row = |n: usize| _mm256_loadu_si256(w.add(n * row_bytes + at) as *const __m256i);
        transpose(std::array::from_fn(|t| {
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(row(2 * t)), row(2 * t + 1))
        }))
    }
}

/// Quads 0..8 of a block for 16 columns from its value words (`Q8_0`: 8 words, each a quad;
/// `Q4_x`: 4 words, word `i`'s low nibbles quad `i` and its high ones quad `4 + i`), written
/// as the tile at `tile`, each quad `q` with `q mod span ≠ r` as zeros.
///
/// # Safety
/// AVX-512 F and BW; 512 bytes writable at `tile`.
#[inline(always)]
unsafe fn write_tile<const Q8: bool>(tile: *mut u8, words: &[__m512i; 8], span: usize, r: usize) {
    // SAFETY: register arithmetic under AVX-512 F and BW, and 8 stores of 64 bytes inside the
    // tile (this function's contract).
    unsafe {
        let nibble = _mm512_set1_epi8(0x0f);
        for q in 0..8 {
            let v = if q % span != r {
                _mm512_setzero_si512()
            } else if Q8 {
                words[q]
            } else if q < 4 {
                _mm512_and_si512(words[q], nibble)
            } else {
                _mm512_and_si512(_mm512_srli_epi16::<4>(words[q - 4]), nibble)
            };
            _mm512_storeu_si512(tile.add(q * 64) as *mut _, v);
        }
    }
}

/// The f16 scales in the low (`HIGH` false) or high half-words of `v` as 16 `f32`.
///
/// # Safety
/// AVX-512 F.
#[inline(always)]
unsafe fn halves<const HIGH: bool>(v: __m512i) -> __m512 {
    // SAFETY: register arithmetic under AVX-512 F (this function's contract).
    unsafe {
        let v = if HIGH { _mm512_srli_epi32::<16>(v) } else { v };
        _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v))
    }
}

/// Unpacks the 16 columns (rows of `w`, `row_bytes` apart, interleaved layout of `f`) into
/// `panel`: each whole group's 8 block tiles and scale vectors, then the tail chunks' tiles
/// (8 per chunk: lane `l`'s is `whole + 8i + l`, with only its quads).
///
/// # Safety
/// AVX-512 F and BW, F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
unsafe fn unpack_panel(
    f: QuantFormat,
    w: &[u8],
    row_bytes: usize,
    blocks: usize,
    panel: &mut Panel,
) {
    // SAFETY: passed on (this function's contract).
    unsafe {
        match f {
            QuantFormat::Q8_0 => unpack_panel_as::<true, false>(f, w, row_bytes, blocks, panel),
            QuantFormat::Q4_1 => unpack_panel_as::<false, true>(f, w, row_bytes, blocks, panel),
            _ => unpack_panel_as::<false, false>(f, w, row_bytes, blocks, panel),
        }
    }
}

/// [`unpack_panel`] for `Q8_0` (`Q8`) or a `Q4_x`, with (`MINS`, `Q4_1`) or without minima
/// of its own.
///
/// # Safety
/// As [`unpack_panel`].
#[inline(always)]
unsafe fn unpack_panel_as<const Q8: bool, const MINS: bool>(
    f: QuantFormat,
    w: &[u8],
    row_bytes: usize,
    blocks: usize,
    panel: &mut Panel,
) {
    assert!(
        w.len() >= PANEL * row_bytes,
        "amx: a panel is 16 whole rows"
    );
    let size = f.block_bytes();
    let head = interleaved::head_bytes(f);
    let words = (size - head) / 4;
    let whole = blocks / GROUP * GROUP;
    let tail_chunks = chunks(blocks).filter(|&(_, c)| c < GROUP).count();
    let vectors = whole + tail_chunks * GROUP;
    if panel.tiles.len() < vectors * TILE_BYTES / 64 {
        panel.tiles.resize(vectors * TILE_BYTES / 64, Line([0; 64]));
        panel.dw.resize(vectors * PANEL, 0.0);
        panel.mw.resize(vectors * PANEL, 0.0);
    }
    let base = w.as_ptr();
    let (tiles, dw, mw) = (
        panel.tiles.as_mut_ptr() as *mut u8,
        panel.dw.as_mut_ptr(),
        panel.mw.as_mut_ptr(),
    );
    // SAFETY: every read is inside the panel's 16 rows (asserted above): a group's first 32
    // bytes and its `words` rows of 32 value bytes, a tail block's words; every write is tile
    // or vector `t < vectors` of the buffers, sized above.
    unsafe {
        let minus8 = _mm512_set1_ps(-8.0);
        for g in 0..whole / GROUP {
            let at = g * GROUP * size;
            // The group's first 32 bytes: 8 scales (f16), then Q4_1's 8 minima (for the
            // other formats, the first values, unused).
            let h = columns_dwords(base, row_bytes, at);
            for b in 0..GROUP {
                let d = if b % 2 == 0 {
                    halves::<false>(h[b / 2])
                } else {
                    halves::<true>(h[b / 2])
                };
                let m = if !MINS {
                    _mm512_mul_ps(d, minus8)
                } else if b % 2 == 0 {
                    halves::<false>(h[4 + b / 2])
                } else {
                    halves::<true>(h[4 + b / 2])
                };
                let t = g * GROUP + b;
                _mm512_storeu_ps(dw.add(t * PANEL), d);
                _mm512_storeu_ps(mw.add(t * PANEL), m);
            }
            // Word i of block j is at `values + 4·(8i + j)`: the words i of the 8 blocks are 32
            // bytes, transposed to 8 vectors (one per block) of 16 columns.
            let values = at + GROUP * head;
            let nibble = _mm512_set1_epi8(0x0f);
            for i in 0..words {
                let t = columns_dwords(base, row_bytes, values + 32 * i);
                for (j, &v) in t.iter().enumerate() {
                    let tile = tiles.add((g * GROUP + j) * TILE_BYTES);
                    if Q8 {
                        _mm512_storeu_si512(tile.add(64 * i) as *mut _, v);
                    } else {
                        let (lo, hi) = (v, _mm512_srli_epi16::<4>(v));
                        _mm512_storeu_si512(
                            tile.add(64 * i) as *mut _,
                            _mm512_and_si512(lo, nibble),
                        );
                        _mm512_storeu_si512(
                            tile.add(64 * (4 + i)) as *mut _,
                            _mm512_and_si512(hi, nibble),
                        );
                    }
                }
            }
        }
        // The tail, as GGUF's blocks, read a word at a time.
        let mut next = whole;
        for (first, c) in chunks(blocks).filter(|&(_, c)| c < GROUP) {
            let span = GROUP / c;
            for p in 0..c {
                let at = (first + p) * size;
                // The block's first dword (its scale, and Q4_1's minimum) and value words, of
                // each of the 16 columns.
                let mut dwords = [[0i32; PANEL]; 9];
                for (n, row) in (0..PANEL).map(|n| (n, base.add(n * row_bytes + at))) {
                    dwords[0][n] = (row as *const i32).read_unaligned();
                    for i in 0..words {
                        dwords[1 + i][n] = (row.add(head + 4 * i) as *const i32).read_unaligned();
                    }
                }
                let h = _mm512_loadu_si512(dwords[0].as_ptr() as *const _);
                let d = halves::<false>(h);
                let m = if MINS {
                    halves::<true>(h)
                } else {
                    _mm512_mul_ps(d, minus8)
                };
                let mut words = [_mm512_setzero_si512(); 8];
                for (i, v) in words.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(dwords[1 + i].as_ptr() as *const _);
                }
                for r in 0..span {
                    write_tile::<Q8>(tiles.add(next * TILE_BYTES), &words, span, r);
                    _mm512_storeu_ps(dw.add(next * PANEL), d);
                    // Only a block's first lane adds its minimum.
                    let m = if r == 0 { m } else { _mm512_setzero_ps() };
                    _mm512_storeu_ps(mw.add(next * PANEL), m);
                    next += 1;
                }
            }
        }
        debug_assert_eq!(next, vectors);
    }
}

/// The updates of a row of `blocks` blocks, lane by lane: (lane, tile and vectors, block).
/// Lane `l` adds blocks `l, l + 8, …` (tile and vectors `b`), then its part of each tail
/// chunk `i` (tile and vectors `whole + 8i + l`, of the chunk's block `l / (8/c)`).
fn updates(blocks: usize, out: &mut Vec<(usize, usize, usize)>) {
    let whole = blocks / GROUP * GROUP;
    out.clear();
    for l in 0..GROUP {
        out.extend((l..whole).step_by(GROUP).map(|b| (l, b, b)));
        let tail = chunks(blocks).filter(|&(_, c)| c < GROUP).enumerate();
        out.extend(tail.map(|(i, (first, c))| (l, whole + GROUP * i + l, first + l / (GROUP / c))));
    }
}
