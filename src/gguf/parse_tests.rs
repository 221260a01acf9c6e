//! The parser on hand-built buffers: every value type, every hostile case.

use super::test_build::*;
use super::*;

fn one_kv(ty: u32, value: &[u8]) -> Vec<u8> {
    let mut g = Gguf::header(3, 0, 1);
    g.key("k", ty).raw(value);
    g.bytes
}

fn parse_one(ty: u32, value: &[u8]) -> Result<Value, GgufError> {
    let h = parse(&one_kv(ty, value))?;
    Ok(h.metadata.into_iter().next().expect("one kv").1)
}

#[test]
fn every_scalar_value_type_is_read_little_endian() {
    let cases: Vec<(u32, Vec<u8>, Value)> = vec![
        (T_U8, vec![200], Value::U8(200)),
        (T_I8, vec![0xff], Value::I8(-1)),
        (T_U16, 0xbeefu16.to_le_bytes().to_vec(), Value::U16(0xbeef)),
        (T_I16, (-2i16).to_le_bytes().to_vec(), Value::I16(-2)),
        (T_U32, 7u32.to_le_bytes().to_vec(), Value::U32(7)),
        (T_I32, (-7i32).to_le_bytes().to_vec(), Value::I32(-7)),
        (T_F32, 1.5f32.to_le_bytes().to_vec(), Value::F32(1.5)),
        (T_BOOL, vec![1], Value::Bool(true)),
        (T_BOOL, vec![0], Value::Bool(false)),
        (T_U64, u64::MAX.to_le_bytes().to_vec(), Value::U64(u64::MAX)),
        (T_I64, i64::MIN.to_le_bytes().to_vec(), Value::I64(i64::MIN)),
        (T_F64, (-0.25f64).to_le_bytes().to_vec(), Value::F64(-0.25)),
    ];
    for (ty, bytes, want) in cases {
        assert_eq!(parse_one(ty, &bytes).unwrap(), want, "type {ty}");
    }
}

#[test]
fn strings_are_read_and_bad_utf8_in_values_is_replaced() {
    let mut v = Gguf::default();
    v.str("héllo");
    assert_eq!(
        parse_one(T_STRING, &v.bytes).unwrap(),
        Value::String("héllo".into())
    );
    let mut bad = Gguf::default();
    bad.u64(2).raw(&[b'a', 0xff]);
    assert_eq!(
        parse_one(T_STRING, &bad.bytes).unwrap(),
        Value::String("a\u{fffd}".into())
    );
}

#[test]
fn short_arrays_keep_their_elements_of_any_type_including_nested_arrays() {
    let mut v = Gguf::default();
    v.u32(T_ARRAY).u64(2);
    v.u32(T_I32).u64(2).u32(1).u32(u32::MAX);
    v.u32(T_STRING).u64(1).str("x");
    let value = parse_one(T_ARRAY, &v.bytes).unwrap();
    let outer = value.as_array().unwrap();
    assert_eq!((outer.element_type, outer.len), (ValueType::Array, 2));
    let items = outer.items.as_ref().unwrap();
    let ints = items[0].as_array().unwrap();
    assert_eq!(
        ints.items.as_deref(),
        Some(&[Value::I32(1), Value::I32(-1)][..])
    );
    let strs = items[1].as_array().unwrap();
    assert_eq!(
        strs.items.as_deref(),
        Some(&[Value::String("x".into())][..])
    );
}

#[test]
fn long_arrays_are_skipped_keeping_only_type_and_length() {
    let n = 150_000;
    let mut g = Gguf::header(3, 1, 2);
    g.kv_tokens("tokenizer.ggml.tokens", n);
    g.key("scores", T_ARRAY).u32(T_F32).u64(n);
    g.raw(&vec![0; n as usize * 4]);
    g.tensor("t", &[2], 0, 0);
    let h = parse(&g.bytes).unwrap();
    let tokens = h.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    assert_eq!((tokens.element_type, tokens.len), (ValueType::String, n));
    assert!(tokens.items.is_none());
    let shown = h.get("tokenizer.ggml.tokens").unwrap().to_string();
    assert_eq!(shown, "[150000 × string]");
    let scores = h.get("scores").unwrap().as_array().unwrap();
    assert_eq!(
        (scores.element_type, scores.len, &scores.items),
        (ValueType::F32, n, &None)
    );
    assert_eq!(h.tensors[0].name, "t");
    assert!(h.retained_bytes() < 4096, "{}", h.retained_bytes());
}

#[test]
fn long_arrays_of_arrays_are_skipped_too() {
    let mut v = Gguf::default();
    v.u32(T_ARRAY).u64(100);
    for _ in 0..100 {
        v.u32(T_U16).u64(1).u16(9);
    }
    let value = parse_one(T_ARRAY, &v.bytes).unwrap();
    assert_eq!(value.as_array().unwrap().len, 100);
}

#[test]
fn tensor_infos_alignment_and_data_offset_are_read() {
    let h = parse(&sample()).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.metadata.len(), 10);
    assert_eq!(h.alignment, DEFAULT_ALIGNMENT);
    let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "token_embd.weight",
            "output_norm.weight",
            "blk.0.attn_q.weight"
        ]
    );
    assert_eq!(h.tensors[0].dims, [64, 100]);
    assert_eq!(h.tensors[0].elements, 6400);
    assert_eq!((h.tensors[2].ggml_type, h.tensors[2].offset), (8, 3872));
    assert_eq!(h.header_len, sample().len() as u64);
    assert_eq!(h.data_offset, h.header_len.next_multiple_of(32));
}

#[test]
fn general_alignment_sets_the_data_offset() {
    let mut g = Gguf::header(2, 1, 1);
    g.kv_u32("general.alignment", 64).tensor("t", &[1], 0, 0);
    let h = parse(&g.bytes).unwrap();
    assert_eq!((h.version, h.alignment), (2, 64));
    assert_eq!(h.data_offset, (g.bytes.len() as u64).next_multiple_of(64));
}

#[test]
fn an_alignment_that_is_not_a_power_of_two_u32_is_refused() {
    for g in [
        {
            let mut g = Gguf::header(3, 0, 1);
            g.kv_u32("general.alignment", 0);
            g
        },
        {
            let mut g = Gguf::header(3, 0, 1);
            g.kv_u32("general.alignment", 48);
            g
        },
        {
            let mut g = Gguf::header(3, 0, 1);
            g.kv_u64("general.alignment", 32);
            g
        },
    ] {
        assert!(matches!(
            parse(&g.bytes),
            Err(GgufError::BadAlignment { .. })
        ));
    }
}

#[test]
fn unknown_ggml_types_are_kept_as_numbers() {
    let mut g = Gguf::header(3, 1, 0);
    g.tensor("t", &[4, 4], 777, 0);
    let h = parse(&g.bytes).unwrap();
    assert_eq!(h.tensors[0].ggml_type, 777);
    assert_eq!(h.tensors[0].bytes(), None);
}

#[test]
fn every_prefix_of_a_valid_header_asks_for_more_and_the_ask_is_honest() {
    let full = sample();
    for len in 0..full.len() {
        match parse(&full[..len]) {
            Err(GgufError::NeedMore { at_least }) => {
                assert!(at_least > len as u64, "prefix {len} asked for {at_least}");
                assert!(
                    at_least <= full.len() as u64,
                    "prefix {len} asked for {at_least}"
                );
            }
            other => panic!("prefix {len}: {other:?}"),
        }
    }
    assert!(parse(&full).is_ok());
}

#[test]
fn following_need_more_reaches_the_header_in_few_steps() {
    let full = sample();
    let mut len = 0u64;
    let mut steps = 0;
    let h = loop {
        match parse(&full[..len as usize]) {
            Ok(h) => break h,
            Err(GgufError::NeedMore { at_least }) => len = at_least,
            Err(e) => panic!("{e}"),
        }
        steps += 1;
    };
    assert_eq!(h.tensors.len(), 3);
    assert!(steps < 40, "{steps} steps");
}

#[test]
fn parse_file_calls_a_header_past_the_end_truncated() {
    let full = sample();
    let cut = &full[..full.len() - 3];
    assert!(matches!(
        parse_file(cut, cut.len() as u64),
        Err(GgufError::Truncated { file_len, .. }) if file_len == cut.len() as u64
    ));
    assert!(matches!(
        parse_file(&full[..10], full.len() as u64),
        Err(GgufError::NeedMore { .. })
    ));
    assert!(parse_file(&full, full.len() as u64).is_ok());
}

#[test]
fn bad_magic_and_unsupported_versions_are_refused() {
    let mut g = Gguf::default();
    g.raw(b"GGML").u32(3).u64(0).u64(0);
    assert_eq!(
        parse(&g.bytes),
        Err(GgufError::BadMagic { found: *b"GGML" })
    );
    for v in [0, 1, 4, 99] {
        let g = Gguf::header(v, 0, 0);
        assert_eq!(
            parse(&g.bytes),
            Err(GgufError::UnsupportedVersion { version: v })
        );
    }
    let g = Gguf::header(3u32.swap_bytes(), 0, 0);
    assert_eq!(parse(&g.bytes), Err(GgufError::BigEndian { version: 3 }));
}

#[test]
fn huge_counts_ask_for_more_without_allocating_for_them() {
    let g = Gguf::header(3, u64::MAX, u64::MAX);
    let (result, peak) = super::fuzz_tests::peak_bytes(|| parse(&g.bytes));
    match result {
        Err(GgufError::NeedMore { at_least }) => assert_eq!(at_least, u64::MAX),
        other => panic!("{other:?}"),
    }
    assert!(peak < 1024, "{peak} bytes allocated");
    let g = Gguf::header(3, u64::MAX, 0);
    assert!(matches!(parse(&g.bytes), Err(GgufError::NeedMore { .. })));
    let mut v = Gguf::default();
    v.u32(T_STRING).u64(u64::MAX / 2);
    assert!(matches!(
        parse_one(T_ARRAY, &v.bytes),
        Err(GgufError::NeedMore { .. })
    ));
    let mut v = Gguf::default();
    v.u32(T_U64).u64(u64::MAX / 2);
    assert!(matches!(
        parse_one(T_ARRAY, &v.bytes),
        Err(GgufError::LengthOverflow { .. })
    ));
}

#[test]
fn lengths_past_the_end_ask_for_exactly_that_much() {
    let mut v = Gguf::default();
    v.u64(1000).raw(b"abc");
    let need = one_kv(T_STRING, &v.bytes).len() as u64 - 3 + 1000;
    assert_eq!(
        parse_one(T_STRING, &v.bytes),
        Err(GgufError::NeedMore { at_least: need })
    );
    let mut v = Gguf::default();
    v.u64(u64::MAX - 4);
    assert!(matches!(
        parse_one(T_STRING, &v.bytes),
        Err(GgufError::LengthOverflow { .. })
    ));
}

#[test]
fn arrays_nested_too_deep_are_refused_kept_or_skipped() {
    for outer_len in [1, MAX_KEPT_ARRAY_LEN + 1] {
        let mut v = Gguf::default();
        v.u32(T_ARRAY).u64(outer_len);
        for _ in 0..MAX_ARRAY_DEPTH + 2 {
            v.u32(T_ARRAY).u64(1);
        }
        assert!(
            matches!(
                parse_one(T_ARRAY, &v.bytes),
                Err(GgufError::ArrayTooDeep { .. })
            ),
            "outer {outer_len}"
        );
    }
    let mut v = Gguf::default();
    for _ in 0..MAX_ARRAY_DEPTH - 1 {
        v.u32(T_ARRAY).u64(1);
    }
    v.u32(T_U8).u64(1).u8(5);
    assert!(
        parse_one(T_ARRAY, &v.bytes).is_ok(),
        "the limit itself is fine"
    );
}

#[test]
fn unknown_value_types_are_refused_at_top_level_and_in_arrays() {
    assert!(matches!(
        parse_one(13, &[0; 8]),
        Err(GgufError::UnknownValueType { type_id: 13, .. })
    ));
    let mut v = Gguf::default();
    v.u32(0xdead).u64(1);
    assert!(matches!(
        parse_one(T_ARRAY, &v.bytes),
        Err(GgufError::UnknownValueType {
            type_id: 0xdead,
            ..
        })
    ));
}

#[test]
fn tensors_with_more_than_four_dims_or_overflowing_dims_are_refused() {
    let mut g = Gguf::header(3, 1, 0);
    g.tensor("t", &[1, 1, 1, 1, 1], 0, 0);
    assert!(matches!(
        parse(&g.bytes),
        Err(GgufError::TooManyDims { n_dims: 5, .. })
    ));
    let mut g = Gguf::header(3, 1, 0);
    g.str("t").u32(u32::MAX);
    assert!(matches!(
        parse(&g.bytes),
        Err(GgufError::TooManyDims { .. })
    ));
    let mut g = Gguf::header(3, 1, 0);
    g.tensor("t", &[1 << 32, 1 << 32], 0, 0);
    assert_eq!(
        parse(&g.bytes),
        Err(GgufError::DimsOverflow { tensor: "t".into() })
    );
    let mut g = Gguf::header(3, 1, 0);
    g.tensor("t", &[1 << 31, 1 << 32], 0, 0);
    assert!(
        matches!(parse(&g.bytes), Err(GgufError::DimsOverflow { .. })),
        "over i64::MAX"
    );
}

#[test]
fn duplicate_keys_and_tensor_names_and_non_utf8_names_are_refused() {
    let mut g = Gguf::header(3, 0, 2);
    g.kv_u32("a", 1).kv_u32("a", 2);
    assert_eq!(
        parse(&g.bytes),
        Err(GgufError::DuplicateKey { key: "a".into() })
    );
    let mut g = Gguf::header(3, 2, 0);
    g.tensor("t", &[1], 0, 0).tensor("t", &[1], 0, 32);
    assert_eq!(
        parse(&g.bytes),
        Err(GgufError::DuplicateTensor { name: "t".into() })
    );
    let mut g = Gguf::header(3, 0, 1);
    g.u64(1).raw(&[0xff]).u32(T_U8).u8(0);
    assert!(matches!(
        parse(&g.bytes),
        Err(GgufError::InvalidName { offset: 24 })
    ));
}

#[test]
fn errors_say_what_failed_in_words() {
    let e = GgufError::TooManyDims {
        tensor: "blk.0".into(),
        n_dims: 9,
        limit: 4,
    };
    assert!(e.to_string().contains("\"blk.0\" has 9 dimensions"), "{e}");
    let e = GgufError::BadMagic { found: *b"GGML" };
    assert!(e.to_string().contains("bytes 47 47 4d 4c"), "{e}");
    let mut g = Gguf::header(3, 0, 1);
    g.kv_u64("general.alignment", 48);
    let e = parse(&g.bytes).unwrap_err();
    assert!(e.to_string().contains("alignment is 48 (u64)"), "{e}");
    let e = GgufError::UnsupportedVersion { version: 1 };
    assert!(e.to_string().contains("version 1 is not supported"), "{e}");
}
