//! The chat example's library on the real model (fetched by `scripts/fetch-smollm2.sh`): answers
//! streamed in prompt order and equal to transformers' greedy text, progress lines, bad
//! arguments refused; and the tokenizer's streaming decoder on text that splits characters
//! across byte tokens.

use std::path::PathBuf;

use ascend_examples::chat::{run, ChatArgs};
use ascend_examples::gguf::Gguf;
use ascend_examples::llama_gguf::Storage;
use ascend_examples::sampling::SamplingParams;
use ascend_examples::tokenizer::{GgufTokenizer, Message};
use hal_mock::CpuBackend;

mod common;
use common::smollm2_or_skip;

fn reference_answer(chat: usize) -> (String, String) {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/smollm2_reference.json"),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let c = &v["chats"][chat];
    let prompt = c["messages"][0]["content"].as_str().unwrap().to_string();
    (prompt, c["generated_text"].as_str().unwrap().to_string())
}

#[test]
fn two_prompts_stream_in_order_and_match_transformers() {
    let Some(path) = smollm2_or_skip() else {
        return;
    };
    let (p1, a1) = reference_answer(1);
    let (p2, a2) = reference_answer(3);
    let args = ChatArgs {
        max_new: 32,
        max_model_len: 256,
        max_tokens_per_step: 40,       // the prompts are prefilled in chunks
        storage: Storage::Dequantized, // float products, as transformers computes
        ..ChatArgs::new(path)
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let outcome = run(
        CpuBackend::new(),
        &args,
        &[p1.clone(), p2.clone()],
        &mut out,
        &mut err,
    )
    .unwrap();
    assert_eq!(outcome.answers, [a1.clone(), a2.clone()]);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(out, format!("[1] {p1}\n{a1}\n[2] {p2}\n{a2}\n"));
    let err = String::from_utf8(err).unwrap();
    assert!(
        err.contains("30 layers, hidden 576, 9 heads / 3 KV heads"),
        "{err}"
    );
    let steps = err.lines().filter(|l| l.starts_with("[step")).count();
    assert_eq!(steps, outcome.report.steps, "{err}");
    assert!(err.contains("tok/s") && err.contains("KV blocks") && err.contains("prefix hit"));
    // Both prompts open with the template's default system prompt: the second finds it cached.
    assert!(outcome.report.prefix_hit_rate > 0.0);

    // Progress off: only the set-up lines.
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let quiet = ChatArgs {
        progress: false,
        max_new: 4,
        ..args.clone()
    };
    run(CpuBackend::new(), &quiet, &[p1], &mut out, &mut err).unwrap();
    let err = String::from_utf8(err).unwrap();
    assert!(!err.contains("[step"), "{err}");
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1);
}

#[test]
fn sampled_answers_repeat_for_a_seed() {
    let Some(path) = smollm2_or_skip() else {
        return;
    };
    let args = ChatArgs {
        max_new: 12,
        max_model_len: 128,
        progress: false,
        sampling: SamplingParams::sampled(0.9, 0.95, 42),
        ..ChatArgs::new(path)
    };
    let answer = |a: &ChatArgs| {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        run(
            CpuBackend::new(),
            a,
            &["Name a color.".to_string()],
            &mut out,
            &mut err,
        )
        .unwrap()
        .answers
    };
    let first = answer(&args);
    assert_eq!(first, answer(&args));
    let others: Vec<_> = (43..47)
        .map(|seed| {
            answer(&ChatArgs {
                sampling: SamplingParams::sampled(0.9, 0.95, seed),
                ..args.clone()
            })
        })
        .collect();
    assert!(others.iter().any(|o| *o != first), "{first:?} {others:?}");
}

#[test]
fn bad_chat_arguments_are_named() {
    let Some(path) = smollm2_or_skip() else {
        return;
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for (args, want) in [
        (
            ChatArgs {
                block_size: 0,
                ..ChatArgs::new(path.clone())
            },
            "--block-size must be positive",
        ),
        (
            ChatArgs {
                sampling: SamplingParams::sampled(f32::INFINITY, 1.0, 0),
                ..ChatArgs::new(path.clone())
            },
            "temperature inf",
        ),
        (
            ChatArgs::new(PathBuf::from("/nonexistent/model.gguf")),
            "/nonexistent/model.gguf",
        ),
        (
            ChatArgs {
                max_model_len: 10,
                ..ChatArgs::new(path.clone())
            },
            "as long as --max-model-len 10 allows",
        ),
    ] {
        let e = run(
            CpuBackend::new(),
            &args,
            &["hello".to_string()],
            &mut out,
            &mut err,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(want), "{e}\n  wanted: {want}");
    }
    let e = run(
        CpuBackend::new(),
        &ChatArgs::new(path),
        &[],
        &mut out,
        &mut err,
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "no prompts");
}

#[test]
fn the_tokenizer_streams_whole_characters_and_keeps_control_tokens_whole() {
    let Some(path) = smollm2_or_skip() else {
        return;
    };
    let tok = GgufTokenizer::from_gguf(&Gguf::open(&path).unwrap()).unwrap();
    let text = "Ünïcödé, 東京 and waves 🌊🌊 — done.";
    let ids = tok.encode(text).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
    let mut stream = tok.stream(false);
    let mut pieces = Vec::new();
    for &id in &ids {
        pieces.push(stream.push(id).unwrap());
    }
    assert_eq!(pieces.concat(), text);
    // Byte tokens of a split character give nothing until the character is whole.
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')));
    assert!(ids.len() > pieces.iter().filter(|p| !p.is_empty()).count());

    let start = tok.token_id("<|im_start|>").unwrap();
    assert_eq!(tok.encode("<|im_start|>user").unwrap()[0], start);
    assert_eq!(start, 1);
    // The template's default system prompt appears when none is given, and not otherwise.
    let default = tok.chat_prompt(&[Message::user("hi")]).unwrap();
    assert!(default.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
    assert!(default.ends_with("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"));
    let own = tok
        .chat_prompt(&[Message::system("Be brief."), Message::user("hi")])
        .unwrap();
    assert_eq!(
        own,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    let e = tok.decode(&[49152]).unwrap_err().to_string();
    assert!(e.contains("token 49152 is outside the 49152 tokens"), "{e}");
}

#[test]
fn on_the_acl_fake_the_blocks_answer_in_f16_and_f32_is_refused_by_name() {
    // The NPU path of `chat --dtype f16`: the file's Q4_1/Q8_0 blocks repacked for
    // aclnnWeightQuantBatchMatmulV2 (on the fake). With f32, the default, the ACL backend
    // refuses the blocks before uploading, naming the tensor and what to do.
    let Some(path) = smollm2_or_skip() else {
        return;
    };
    let (p1, a1) = reference_answer(1);
    let args = ChatArgs {
        max_new: 6,
        max_model_len: 128,
        progress: false,
        dtype: ascend_hal::DType::F16,
        ..ChatArgs::new(path)
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let outcome = run(common::acl_backend(), &args, &[p1], &mut out, &mut err).unwrap();
    let err = String::from_utf8(err).unwrap();
    assert!(err.contains("weights as blocks"), "{err}");
    // Six greedy tokens of transformers' answer (the quantized run agrees with it for its
    // first 8 ids: smollm2_reference.rs).
    let answer = &outcome.answers[0];
    assert!(
        !answer.is_empty() && a1.starts_with(answer.as_str()),
        "{answer:?} is not how {a1:?} starts"
    );

    let f32_args = ChatArgs {
        dtype: ascend_hal::DType::F32,
        ..args
    };
    let e = run(
        common::acl_backend(),
        &f32_args,
        &["hi".into()],
        &mut Vec::new(),
        &mut Vec::new(),
    )
    .expect_err("f32 blocks on ACL are refused")
    .to_string();
    assert!(
        e.contains("with f32 activations, which this backend cannot run")
            && e.contains("run the model in f16/bf16"),
        "{e}"
    );
}
