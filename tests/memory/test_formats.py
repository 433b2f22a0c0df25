import pytest

from fineserve.memory import InvalidFormatError, KVDtype, KVFormat

KIB, MIB = 1024, 1024 * 1024


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        # Llama-3.1-8B: 32 layers, 8 KV heads, head dim 128, 16 tokens per page (DESIGN.md)
        (KVFormat(32, 8, 128, KVDtype.FP16), 2 * MIB),
        (KVFormat(32, 8, 128, KVDtype.BF16), 2 * MIB),
        (KVFormat(32, 8, 128, KVDtype.FP32), 4 * MIB),
        (KVFormat(32, 8, 128, KVDtype.FP8), 1 * MIB),
        # INT4 with fp16 scale + zero per token-head: 32*2*16*8*(64+4)
        (KVFormat(32, 8, 128, KVDtype.INT4), 544 * KIB),
        # INT8 with an fp16 scale per token-head: 32*2*16*8*(128+2)
        (KVFormat(32, 8, 128, KVDtype.INT8), 32 * 2 * 16 * 8 * 130),
        # Qwen3-32B at TP=2: 64 layers, 4 KV heads per rank
        (KVFormat(64, 4, 128, KVDtype.FP16), 2 * MIB),
        # Llama-3.1-70B at TP=4: 80 layers, 2 KV heads per rank
        (KVFormat(80, 2, 128, KVDtype.FP16), 1280 * KIB),
    ],
)
def test_page_bytes_match_design(fmt: KVFormat, expected: int) -> None:
    assert fmt.page_bytes == expected


def test_bytes_per_token_times_tokens_is_page() -> None:
    fmt = KVFormat(28, 4, 64, KVDtype.INT4, tokens_per_page=32)
    assert fmt.bytes_per_token * 32 == fmt.page_bytes
    assert fmt.with_tokens_per_page(8).page_bytes == fmt.bytes_per_token * 8


def test_layout_regions_tile_the_page_without_overlap() -> None:
    fmt = KVFormat(3, 2, 16, KVDtype.INT4, tokens_per_page=4)
    lay = fmt.layout
    regions = []
    for layer in range(3):
        regions += [
            (lay.k_offset(layer), lay.data_bytes),
            (lay.k_scale_offset(layer), lay.scale_bytes),
            (lay.v_offset(layer), lay.data_bytes),
            (lay.v_scale_offset(layer), lay.scale_bytes),
        ]
    regions.sort()
    position = 0
    for start, size in regions:
        assert start == position
        position += size
    assert position == fmt.page_bytes
    assert lay.scale_bytes == 4 * 2 * 2 * 2  # T x heads x (scale, zero) x fp16


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_layers": 32, "kv_heads": 0, "head_dim": 128},
        {"num_layers": 0, "kv_heads": 8, "head_dim": 128},
        {"num_layers": 32, "kv_heads": 8, "head_dim": 128, "tokens_per_page": 0},
        {"num_layers": 32, "kv_heads": 8, "head_dim": 3, "dtype": KVDtype.INT4},
        {"num_layers": 32, "kv_heads": 8, "head_dim": 128, "dtype": "int3"},
    ],
)
def test_bad_formats_are_rejected(kwargs: dict) -> None:
    with pytest.raises(InvalidFormatError):
        KVFormat(**kwargs)


def test_dtype_accepts_its_string_name() -> None:
    assert KVFormat(2, 2, 64, "fp8").dtype is KVDtype.FP8
