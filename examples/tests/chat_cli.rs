//! The chat example's command line and model loading on bad input: help and unknown options are
//! not taken as prompts, a device or a FIFO is not read as a model, and a max model length past
//! the model's context is refused by name.

use ascend_examples::chat::{parse_args, ChatArgs, ChatSession, Command};

fn parse(args: &[&str]) -> Result<Command, String> {
    parse_args(args.iter().map(|s| s.to_string()))
}

fn prompts(args: &[&str]) -> Vec<String> {
    match parse(args) {
        Ok(Command::Run(_, p)) => p,
        other => panic!("{args:?}: {other:?}"),
    }
}

#[test]
fn help_and_unknown_options_are_not_prompts() {
    for h in ["-h", "--help"] {
        assert!(
            matches!(parse(&["--model", "m.gguf", h, "hi"]), Ok(Command::Help)),
            "{h}"
        );
    }
    for bad in ["-x", "--verbose", "-help"] {
        let e = parse(&["--model", "m.gguf", bad, "hi"]).unwrap_err();
        assert!(e.contains(&format!("unknown option {bad}")), "{e}");
        assert!(e.contains("after '--'"), "{e}");
    }
    assert_eq!(
        prompts(&["--model", "m.gguf", "hi", "--", "-x", "--help"]),
        ["hi", "-x", "--help"]
    );
    assert_eq!(prompts(&["--model", "m.gguf", "-"]), ["-"]);
    let e = parse(&["--model", "m.gguf", "--max-new"]).unwrap_err();
    assert!(e.contains("--max-new needs a value"), "{e}");
    let e = parse(&["--model", "m.gguf", "--max-batch", "0"]).unwrap_err();
    assert!(e.contains("--max-batch must be positive"), "{e}");
}

#[test]
fn weights_stay_blocks_unless_dequantize_is_given() {
    use ascend_examples::llama_gguf::Storage;
    let storage = |args: &[&str]| match parse(args) {
        Ok(Command::Run(a, _)) => a.storage,
        other => panic!("{args:?}: {other:?}"),
    };
    assert_eq!(storage(&["--model", "m.gguf", "hi"]), Storage::Quantized);
    assert_eq!(
        storage(&["--model", "m.gguf", "--dequantize", "hi"]),
        Storage::Dequantized
    );
    assert_eq!(
        storage(&["--model", "m.gguf", "--w8a8", "hi"]),
        Storage::W8A8
    );
    let e = parse(&["--model", "m.gguf", "--w8a8", "--dequantize", "hi"]).unwrap_err();
    assert_eq!(e, "--dequantize and --w8a8 are exclusive: choose one");
    // After '--' it is a prompt.
    assert_eq!(
        prompts(&["--model", "m.gguf", "--", "--dequantize"]),
        ["--dequantize"]
    );
}

#[test]
fn dtype_picks_what_the_model_computes_in() {
    use ascend_hal::DType;
    let dtype = |args: &[&str]| match parse(args) {
        Ok(Command::Run(a, _)) => a.dtype,
        other => panic!("{args:?}: {other:?}"),
    };
    assert_eq!(dtype(&["--model", "m.gguf", "hi"]), DType::F32);
    assert_eq!(
        dtype(&["--model", "m.gguf", "--dtype", "f16", "hi"]),
        DType::F16
    );
    assert_eq!(
        dtype(&["--model", "m.gguf", "--dtype", "bf16", "hi"]),
        DType::BF16
    );
    let e = parse(&["--model", "m.gguf", "--dtype", "int8", "hi"]).unwrap_err();
    assert_eq!(e, "--dtype int8: expected f32, f16 or bf16");
    let mut args = ChatArgs::new("m.gguf".into());
    args.dtype = DType::I32;
    assert_eq!(
        args.validate().unwrap_err(),
        "dtype i32: expected f32, f16 or bf16"
    );
}

fn open_error(model: &str, max_model_len: usize) -> String {
    let backend = hal_mock::CpuBackend::new();
    let mut args = ChatArgs::new(model.into());
    args.max_model_len = max_model_len;
    args.progress = false;
    let mut err = Vec::new();
    match ChatSession::<_, f32>::open(&backend, &args, &mut err) {
        Ok(_) => panic!("{model} was loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_device_or_a_directory_is_not_read_as_a_model() {
    let e = open_error("/dev/zero", 2048);
    assert!(
        e.contains("/dev/zero is not a regular file (a device)"),
        "{e}"
    );
    let e = open_error("/", 2048);
    assert!(e.contains("is not a regular file (a directory)"), "{e}");
}
