//! Extreme values fed to the example's arguments, model sizes and workload: an error or a sane
//! value, never a panic or an abort.

use ascend_examples::decode::{workload, DecodeArgs};
use ascend_examples::model::ModelConfig;
use proptest::prelude::*;

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(2),
        Just(7),
        Just(64),
        Just(512),
        Just(u32::MAX as usize),
        Just(usize::MAX / 2),
        Just(usize::MAX),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arguments(vocab in size(), hidden in size(), layers in size(), heads in size(),
                 kv_heads in size(), intermediate in size(), requests in size(),
                 system_prompt in size(), max_new in size(), block in size(),
                 max_model_len in size()) {
        let a = DecodeArgs {
            model: ModelConfig { vocab, hidden, layers, heads, kv_heads, intermediate, max_position: max_model_len, ..ModelConfig::default() },
            requests,
            system_prompt,
            max_new,
            block_size: block,
            max_model_len,
            ..DecodeArgs::default()
        };
        let _ = a.model.head_size();
        let _ = a.model.elements();
        if a.requests > DecodeArgs::MAX_REQUESTS {
            prop_assert!(a.validate().is_err());
        }
        if a.validate().is_ok() {
            // What validates is small enough to build: the workload for it is sane.
            prop_assert!(a.model.elements().unwrap() <= ModelConfig::MAX_ELEMENTS);
            if a.requests <= 64 && a.system_prompt <= 4096 {
                let w = workload(&a);
                prop_assert_eq!(w.len(), a.requests);
                for r in &w {
                    prop_assert!(r.max_new >= 1);
                    prop_assert!(r.prompt.len() + r.max_new <= a.max_model_len);
                    prop_assert!(r.prompt.iter().all(|&t| (t as usize) < a.model.vocab));
                }
            }
        }
    }
}
