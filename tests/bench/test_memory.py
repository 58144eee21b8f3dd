"""Parameter bytes a decode step reads, and the memory-traffic model."""

from mlx_mqa.bench import memory


def test_weight_bytes_and_traffic_model(tiny):
    _, models = tiny
    a = models[4].args
    d, dkv, H, ff, V, L = a.d_model, a.d_kv, a.num_heads, a.d_ff, a.vocab_size, a.num_decoder_layers
    for g, model in models.items():
        w = memory.mlx_weight_bytes(model)
        # decoder block: q,o (H heads) + k,v (G heads) twice (self, cross) + FFN + 3 norms; + final norm + head
        block = 2 * (2 * H * dkv * d + 2 * g * dkv * d) + 2 * d * ff + 3 * d
        assert w["decoder_step"] == 4 * (L * block + d + V * d + 32 * H)  # 32 x H: relative bias of block 0
    t = memory.traffic_per_step(
        1000, num_layers=2, kv_heads=4, d_kv=16, batch_size=1, input_len=10, output_len=5, itemsize=4
    )
    per_token = 2 * 2 * 4 * 16 * 4
    assert t == {
        "weights": 1000.0,
        "kv_self": per_token * 3.0,
        "kv_cross": per_token * 10.0,
        "total": 1000.0 + per_token * 13.0,
    }
    full = memory.traffic_per_step(1000, 2, 4, 16, 1, 10, 5, 4, self_kv="full")
    assert full["kv_self"] == per_token * 5
