//! ggml's numbering: tensor types (with their block sizes) and llama.cpp's
//! file types (the quantization a model is named by).

/// A ggml tensor type: name, elements per block, bytes per block.
struct GgmlType {
    id: u32,
    name: &'static str,
    block_elements: u64,
    block_bytes: u64,
}

const QK_K: u64 = 256;

/// ggml's `enum ggml_type` with the block sizes ggml uses; taken from
/// gguf-py's `GGMLQuantizationType` and `GGML_QUANT_SIZES`
/// (ggml-org/llama.cpp, gguf-py/gguf/constants.py, gguf 0.19.0), which
/// mirror ggml/include/ggml.h and ggml/src/ggml.c `type_traits`. Ids that
/// ggml removed (4, 5: Q4_2/Q4_3; 31-33, 36-38: the repacked Q4_0_x_y and
/// IQ4_NL_x_y) are absent and count as unknown.
const GGML_TYPES: &[GgmlType] = &[
    t(0, "F32", 1, 4),
    t(1, "F16", 1, 2),
    t(2, "Q4_0", 32, 2 + 16),
    t(3, "Q4_1", 32, 2 + 2 + 16),
    t(6, "Q5_0", 32, 2 + 4 + 16),
    t(7, "Q5_1", 32, 2 + 2 + 4 + 16),
    t(8, "Q8_0", 32, 2 + 32),
    t(9, "Q8_1", 32, 4 + 4 + 32),
    t(10, "Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
    t(11, "Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
    t(12, "Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12),
    t(13, "Q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
    t(14, "Q6_K", QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),
    t(15, "Q8_K", QK_K, 4 + QK_K + QK_K / 8),
    t(16, "IQ2_XXS", QK_K, 2 + QK_K / 4),
    t(17, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32),
    t(18, "IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8),
    t(19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
    t(20, "IQ4_NL", 32, 2 + 16),
    t(21, "IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4),
    t(22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
    t(23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
    t(24, "I8", 1, 1),
    t(25, "I16", 1, 2),
    t(26, "I32", 1, 4),
    t(27, "I64", 1, 8),
    t(28, "F64", 1, 8),
    t(29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
    t(30, "BF16", 1, 2),
    t(34, "TQ1_0", QK_K, 2 + 4 * 13),
    t(35, "TQ2_0", QK_K, 2 + 64),
    t(39, "MXFP4", 32, 1 + 16),
    t(40, "NVFP4", 64, 4 + 32),
    t(41, "Q1_0", 128, 2 + 16),
];

const fn t(id: u32, name: &'static str, block_elements: u64, block_bytes: u64) -> GgmlType {
    GgmlType {
        id,
        name,
        block_elements,
        block_bytes,
    }
}

fn ggml_type(id: u32) -> Option<&'static GgmlType> {
    GGML_TYPES.iter().find(|t| t.id == id)
}

/// ggml's name for a tensor type id, `None` for an id it does not define.
pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    ggml_type(id).map(|t| t.name)
}

/// The bytes a tensor of `elements` elements of ggml type `id` takes, as
/// ggml computes it (`ggml_row_size`, whole blocks). `None` for an unknown
/// type or an element count that is not a whole number of blocks.
pub fn tensor_bytes(id: u32, elements: u64) -> Option<u64> {
    let t = ggml_type(id)?;
    if !elements.is_multiple_of(t.block_elements) {
        return None;
    }
    (elements / t.block_elements).checked_mul(t.block_bytes)
}

/// llama.cpp's `enum llama_ftype` (ggml-org/llama.cpp, include/llama.h,
/// "model file types"; the same numbers as gguf-py's `LlamaFileType` in
/// gguf-py/gguf/constants.py), named as `llama-quantize` names them
/// (tools/quantize/quantize.cpp `QUANT_OPTIONS`). 4-6 and 33-35 were
/// removed from llama.cpp and are unknown here.
const FILE_TYPES: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (7, "Q8_0"),
    (8, "Q5_0"),
    (9, "Q5_1"),
    (10, "Q2_K"),
    (11, "Q3_K_S"),
    (12, "Q3_K_M"),
    (13, "Q3_K_L"),
    (14, "Q4_K_S"),
    (15, "Q4_K_M"),
    (16, "Q5_K_S"),
    (17, "Q5_K_M"),
    (18, "Q6_K"),
    (19, "IQ2_XXS"),
    (20, "IQ2_XS"),
    (21, "Q2_K_S"),
    (22, "IQ3_XS"),
    (23, "IQ3_XXS"),
    (24, "IQ1_S"),
    (25, "IQ4_NL"),
    (26, "IQ3_S"),
    (27, "IQ3_M"),
    (28, "IQ2_S"),
    (29, "IQ2_M"),
    (30, "IQ4_XS"),
    (31, "IQ1_M"),
    (32, "BF16"),
    (36, "TQ1_0"),
    (37, "TQ2_0"),
    (38, "MXFP4_MOE"),
    (39, "NVFP4"),
    (40, "Q1_0"),
];

/// `LLAMA_FTYPE_GUESSED`: set by llama.cpp when the file did not say.
const FILE_TYPE_GUESSED: u64 = 1024;

/// The quantization name of a `general.file_type` value, as llama.cpp names
/// it ("Q4_K_M"); "unknown (N)" for a number llama.cpp does not define.
pub fn file_type_name(file_type: u64) -> String {
    let guessed = file_type & FILE_TYPE_GUESSED != 0 && file_type != FILE_TYPE_GUESSED;
    let base = if guessed {
        file_type & !FILE_TYPE_GUESSED
    } else {
        file_type
    };
    match FILE_TYPES.iter().find(|(n, _)| u64::from(*n) == base) {
        Some((_, name)) if guessed => format!("{name} (guessed)"),
        Some((_, name)) => (*name).to_string(),
        None => format!("unknown ({file_type})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_types_are_named_as_llama_cpp_names_them() {
        assert_eq!(file_type_name(0), "F32");
        assert_eq!(file_type_name(1), "F16");
        assert_eq!(file_type_name(7), "Q8_0");
        assert_eq!(file_type_name(15), "Q4_K_M");
        assert_eq!(file_type_name(18), "Q6_K");
        assert_eq!(file_type_name(19), "IQ2_XXS");
        assert_eq!(file_type_name(32), "BF16");
        assert_eq!(file_type_name(38), "MXFP4_MOE");
        assert_eq!(file_type_name(1024 | 15), "Q4_K_M (guessed)");
    }

    #[test]
    fn unknown_file_types_say_their_number() {
        assert_eq!(file_type_name(4), "unknown (4)");
        assert_eq!(file_type_name(99), "unknown (99)");
        assert_eq!(file_type_name(1024), "unknown (1024)");
        assert_eq!(file_type_name(u64::MAX), format!("unknown ({})", u64::MAX));
    }

    #[test]
    fn tensor_bytes_follow_ggml_block_sizes() {
        assert_eq!(tensor_bytes(0, 10), Some(40));
        assert_eq!(tensor_bytes(1, 10), Some(20));
        assert_eq!(tensor_bytes(8, 64), Some(68));
        assert_eq!(tensor_bytes(12, 512), Some(288));
        assert_eq!(tensor_bytes(14, 256), Some(210));
        assert_eq!(tensor_bytes(8, 33), None, "not whole blocks");
        assert_eq!(tensor_bytes(4, 32), None, "removed type");
        assert_eq!(tensor_bytes(0, u64::MAX), None, "overflow");
        assert_eq!(ggml_type_name(30), Some("BF16"));
        assert_eq!(ggml_type_name(1000), None);
    }
}
