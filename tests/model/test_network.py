"""The CheXtriev network: shapes, the paper's formulas, V1's adjacency-chosen edges, training of
edges/location/gates, parameter counts at paper size, reduced precision."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from model.catalogue import NUM_FINDINGS, NUM_REGIONS
from model.config import ModelConfig, anatomical_adjacency
from model.graph_layers import EdgeAwareAttention, GatedResidual, GraphTransformerLayer
from model.network import CheXtriev

VARIANTS = ("V0", "V1", "V2", "V3", "V4", "V5", "V6")
INPUT_DIM = 48
SMALL = {"width": 32, "num_heads": 4, "head_dim": 8, "ff_dim": 64}


def small_model(variant: str, **overrides) -> CheXtriev:
    torch.manual_seed(0)
    return CheXtriev(ModelConfig.for_variant(variant, INPUT_DIM, **{**SMALL, **overrides})).eval()


def region_features(batch: int, input_dim: int = INPUT_DIM, seed: int = 1) -> torch.Tensor:
    """Non-negative features, like the pooled output of a ReLU backbone."""
    return torch.rand(batch, NUM_REGIONS, input_dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shapes_and_unit_embeddings(variant):
    with torch.no_grad():
        out = small_model(variant)(region_features(3))
    assert out.logits.shape == (3, NUM_FINDINGS)
    assert out.node_states.shape == (3, NUM_REGIONS, SMALL["width"])
    assert out.embedding.shape == (3, SMALL["width"])
    assert torch.allclose(out.embedding.norm(dim=-1), torch.ones(3), atol=1e-5)
    if variant == "V4":
        assert out.node_logits.shape == (3, NUM_REGIONS, NUM_FINDINGS)
    else:
        assert out.node_logits is None


@pytest.mark.parametrize("variant", ["V0", "V1", "V4", "V6"])
def test_permuting_the_batch_permutes_every_output(variant):
    model, x, perm = small_model(variant), region_features(5), torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        out, permuted = model(x), model(x[perm])
    for name, value in out._asdict().items():
        if value is not None:
            assert torch.allclose(getattr(permuted, name), value[perm], atol=1e-6), name


def test_v0_is_the_normalised_mean_of_projected_regions():
    model, x = small_model("V0"), region_features(4)
    first, second = model.projection[0], model.projection[2]
    h0 = torch.relu(x @ first.weight.T + first.bias) @ second.weight.T + second.bias
    mean = h0.mean(dim=1)
    with torch.no_grad():
        out = model(x)
    assert torch.allclose(out.embedding, mean / mean.norm(dim=-1, keepdim=True), atol=1e-6)
    assert torch.allclose(out.logits, model.classifier(mean), atol=1e-6)
    assert torch.allclose(out.node_states, h0, atol=1e-6)
    assert {name.split(".")[0] for name, _ in model.named_parameters()} == {"projection", "classifier"}


def _dependency(model: CheXtriev, x: torch.Tensor) -> torch.Tensor:
    """dependency[i, j]: node i's output changes when region j's input feature changes."""
    with torch.no_grad():
        base = model(x).node_states[0]
        rows = []
        for j in range(NUM_REGIONS):
            changed = x.clone()
            changed[0, j] = torch.rand(x.shape[-1], generator=torch.Generator().manual_seed(100 + j))
            rows.append((model(changed).node_states[0] - base).abs().amax(dim=-1) > 1e-6)
    return torch.stack(rows, dim=1)


def _first_layer_attention(model: CheXtriev, x: torch.Tensor, raw_edges: torch.Tensor | None) -> torch.Tensor:
    """Attention weights (b, h, n, n) of the first layer on input x with raw edges (n|1, n|1, width),
    or with projected edges that are exactly zero (None)."""
    layer = model.layers[0]
    with torch.no_grad():
        nodes = layer.attention_norm(model.projection(x))
        edges = (torch.zeros(layer.attention.num_heads, 1, 1, SMALL["head_dim"]) if raw_edges is None
                 else layer.attention.project_edges(raw_edges))
        return layer.attention.attention_weights(nodes, edges)


def test_v1_edges_are_two_vectors_picked_by_the_adjacency():
    model = small_model("V1")
    assert model.edges.shape == (2, SMALL["width"])
    assert model.adjacency.dtype == torch.long and "adjacency" not in model.state_dict()
    raw_edges = []
    model.layers[0].attention.edges_to_kv.register_forward_hook(
        lambda module, inputs, output: raw_edges.append(inputs[0]))
    with torch.no_grad():
        model(region_features(2))
    adjacency = torch.tensor(anatomical_adjacency())
    assert raw_edges[0].shape == (NUM_REGIONS, NUM_REGIONS, SMALL["width"])
    assert torch.equal(raw_edges[0][adjacency], model.edges[1].expand(int(adjacency.sum()), -1))
    assert torch.equal(raw_edges[0][~adjacency], model.edges[0].expand(int((~adjacency).sum()), -1))


def test_v1_masks_nothing():
    """The research code's V1 is fully connected: the adjacency only chooses edge vectors."""
    model, x = small_model("V1", num_layers=1), region_features(2)
    assert (_first_layer_attention(model, x, model.edges[model.adjacency]) > 0).all()
    assert _dependency(model, x[:1]).all(), "one layer lets every region reach every other"


def test_v1_edge_vectors_shift_attention_between_adjacent_and_other_pairs():
    """q_i . e is the same for every j when one vector is shared, so it cancels in the softmax; V1's
    two vectors add one constant to the scores of i's adjacent pairs and another to the rest."""
    model, x = small_model("V1"), region_features(2)
    plain = _first_layer_attention(model, x, None)
    for vector in model.edges:
        assert torch.allclose(_first_layer_attention(model, x, vector.view(1, 1, -1)), plain, atol=1e-6)
    v1 = _first_layer_attention(model, x, model.edges[model.adjacency])
    assert not torch.allclose(v1, plain, atol=1e-3)
    shift = v1.log() - plain.log()  # per (b, h, i): one value over adjacent j, another over the rest
    adjacency = torch.tensor(anatomical_adjacency())
    for i in range(NUM_REGIONS):
        near, far = shift[..., i, adjacency[i]], shift[..., i, ~adjacency[i]]
        assert near.shape[-1] and far.shape[-1], "every region has adjacent and non-adjacent regions"
        assert torch.allclose(near, near[..., :1].expand_as(near), atol=1e-4)
        assert torch.allclose(far, far[..., :1].expand_as(far), atol=1e-4)
        assert ((near[..., 0] - far[..., 0]).abs() > 1e-3).all()


def test_attention_follows_the_edge_aware_formula():
    torch.manual_seed(0)
    heads, head_dim, width, n = 2, 4, 6, 5
    attention = EdgeAwareAttention(width, heads, head_dim, dropout=0.0)
    nodes, raw_edges = torch.randn(1, n, width), torch.randn(n, n, width)
    with torch.no_grad():
        actual = attention(nodes, attention.project_edges(raw_edges))[0]
        q, k, v = F.linear(nodes[0], attention.to_q.weight, attention.to_q.bias), *F.linear(
            nodes[0], attention.to_kv.weight, attention.to_kv.bias).chunk(2, dim=-1)
        e = F.linear(raw_edges, attention.edges_to_kv.weight, attention.edges_to_kv.bias)
        heads_out = []
        for c in range(heads):
            part = slice(c * head_dim, (c + 1) * head_dim)
            score = torch.tensor([[q[i, part] @ (k[j, part] + e[i, j, part]) / head_dim ** 0.5
                                   for j in range(n)] for i in range(n)])
            a = score.softmax(dim=-1)
            heads_out.append(torch.stack([sum(a[i, j] * (v[j, part] + e[i, j, part]) for j in range(n))
                                          for i in range(n)]))
        expected = attention.to_out(torch.cat(heads_out, dim=-1))
    assert torch.allclose(actual, expected, atol=1e-5)


def test_gated_residual_follows_its_formula():
    torch.manual_seed(0)
    gated = GatedResidual(4)
    x, anchor = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    with torch.no_grad():
        g = torch.sigmoid(torch.cat((x, anchor, x - anchor), dim=-1) @ gated.gate.weight.T)
        assert g.shape == (2, 3, 1)
        assert torch.allclose(gated(x, anchor), g * x + (1 - g) * anchor, atol=1e-6)


@pytest.mark.parametrize("global_residual", [True, False])
def test_gates_mix_with_h0_when_global_and_with_the_block_input_when_local(global_residual):
    torch.manual_seed(0)
    layer = GraphTransformerLayer(8, 2, 4, 16, dropout=0.0, global_residual=global_residual)
    for gate in (layer.attention_gate, layer.feed_forward_gate):
        torch.nn.init.zeros_(gate.gate.weight)  # every gate is then exactly 1/2
    h, h0, edges, location = torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(5, 5, 8), torch.randn(5, 8)
    with torch.no_grad():
        attended = layer.attention(layer.attention_norm(h) + location, layer.attention.project_edges(edges))
        h1 = (attended + (h0 if global_residual else h)) / 2
        fed = layer.feed_forward(layer.feed_forward_norm(h1))
        expected = (fed + (h0 if global_residual else h1)) / 2
        assert torch.allclose(layer(h, h0, edges, location), expected, atol=1e-6)


@pytest.mark.parametrize("retrieval", ["multilevel", "last"])
def test_retrieval_embedding_levels(retrieval):
    model, x = small_model("V6", retrieval=retrieval), region_features(3)
    with torch.no_grad():
        out = model(x)
        h0 = model.projection(x)
        h1 = model.layers[0](h0, h0, model.edges, model.location)
        assert torch.allclose(model.layers[1](h1, h0, model.edges, model.location), out.node_states, atol=1e-6)
    per_region = h0 + h1 + out.node_states if retrieval == "multilevel" else out.node_states
    assert torch.allclose(out.embedding, F.normalize(per_region.mean(dim=1), dim=-1), atol=1e-6)
    assert torch.allclose(out.node_embeddings, F.normalize(per_region, dim=-1), atol=1e-6)


def test_node_logits_apply_the_image_classifier_to_each_region():
    model = small_model("V4")
    with torch.no_grad():
        out = model(region_features(2))
        assert torch.allclose(out.node_logits, model.classifier(out.node_states), atol=1e-6)


def _one_adam_step(model: CheXtriev, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """One training step on a multi-label loss; returns the state before it."""
    before = {name: value.detach().clone() for name, value in model.state_dict().items()}
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = model(x)
    targets = torch.zeros_like(out.logits)
    targets[:, ::2] = 1
    F.binary_cross_entropy_with_logits(out.logits, targets).backward()
    optimiser.step()
    return before


def test_edges_location_and_gates_are_trained():
    """The research code's edge tensor was a buffer, never trained; here every pair's vector learns."""
    model = small_model("V6")
    before = _one_adam_step(model, region_features(4))
    assert isinstance(model.edges, torch.nn.Parameter)
    assert (model.edges.grad.abs().sum(dim=-1) > 0).all(), "every ordered pair's edge vector gets a gradient"
    assert (model.location.grad.abs().sum(dim=-1) > 0).all(), "every region's location vector gets a gradient"
    gates = [name for name, _ in model.named_parameters() if name.endswith("gate.weight")]
    assert len(gates) == 4
    for name, parameter in model.named_parameters():
        assert parameter.grad.abs().sum() > 0, name
        assert not torch.equal(parameter.detach(), before[name]), f"{name} did not change after one Adam step"


def test_v1_trains_both_edge_vectors():
    model = small_model("V1")
    before = _one_adam_step(model, region_features(4))
    assert isinstance(model.edges, torch.nn.Parameter)
    assert (model.edges.grad.abs().sum(dim=-1) > 0).all(), "the adjacent and the non-adjacent vector get gradients"
    assert (model.edges.detach() != before["edges"]).any(dim=-1).all(), "both vectors change after one Adam step"
    for name, parameter in model.named_parameters():
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("variant", ["V1", "V6"])
def test_frozen_edges_reproduce_the_research_buffer(variant):
    model = small_model(variant, train_edges=False)
    assert "edges" not in dict(model.named_parameters()) and "edges" in model.state_dict()
    before = _one_adam_step(model, region_features(4))
    assert torch.equal(model.edges, before["edges"])
    assert not torch.equal(model.projection[0].weight.detach(), before["projection.0.weight"])
    model.eval()
    with torch.no_grad():
        out = model(region_features(2)).embedding
        model.edges.mul_(-1)
        assert not torch.allclose(model(region_features(2)).embedding, out), "the frozen edges still shape the output"


def test_edge_projection_runs_once_per_layer_whatever_the_batch():
    model = small_model("V6")
    projected_shapes = []
    for layer in model.layers:
        layer.attention.edges_to_kv.register_forward_hook(
            lambda module, inputs, output: projected_shapes.append(tuple(inputs[0].shape)))
    with torch.no_grad():
        model(region_features(7))
    assert projected_shapes == [(NUM_REGIONS, NUM_REGIONS, SMALL["width"])] * 2


@pytest.mark.parametrize("variant", ["V1", "V6"])
def test_state_dict_and_config_round_trip_rebuild_the_same_network(variant):
    model, x = small_model(variant, train_edges=False), region_features(2)
    config = ModelConfig.from_dict(json.loads(json.dumps(model.config.to_dict())))
    torch.manual_seed(123)
    rebuilt = CheXtriev(config).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x).embedding, model(x).embedding)


@pytest.mark.parametrize("bad", [
    torch.zeros(2, NUM_REGIONS - 1, INPUT_DIM),
    torch.zeros(2, NUM_REGIONS, INPUT_DIM + 1),
    torch.zeros(NUM_REGIONS, INPUT_DIM),
    torch.zeros(2, NUM_REGIONS, INPUT_DIM, dtype=torch.int64),
])
def test_wrong_inputs_are_refused_with_the_expected_shape(bad):
    with pytest.raises(ValueError, match=rf"\(batch, {NUM_REGIONS}, {INPUT_DIM}\)"):
        small_model("V6")(bad)


def test_half_precision_cached_features_are_accepted():
    model, x = small_model("V6"), region_features(2).half()
    with torch.no_grad():
        assert torch.equal(model(x).embedding, model(x.float()).embedding)


def _paper(variant: str = "V6", **overrides) -> CheXtriev:
    with torch.device("meta"):  # shapes only: counting needs no memory or initialisation
        return CheXtriev(ModelConfig.for_variant(variant, 2048, **overrides))


def test_paper_size_parameter_counts():
    """REFERENCE_NOTES: projection 3.2M, graph transformer 22.1M.

    Projection: 2048*1024 + 1024 + 1024*1024 + 1024 = 3,147,776 exactly (the notes' "3.2M" is this
    number rounded up from 3.15M). Graph transformer (all the rest): per layer attention
    q 1024->512, kv 1024->1024, edges 1024->512, out 512->1024 (2,624,512), feed-forward
    1024->4096->1024 (8,393,728), two LayerNorms and two 3072-weight gates: 11,028,480; x2 layers,
    + 18 location vectors (18,432) + classifier LayerNorm and Linear (11,273) = 22,086,665 with the
    edges as an untrained buffer, as the research code counted them: 22.1M. The research code had
    64 location vectors and a 2-entry adjacency embedding (+49,152), still 22.1M. With the edges
    trained, as the paper says, they add 18*18*1024 = 331,776 parameters: 22.4M. V1 has no location
    vectors and two trained edge vectors instead: 22,086,665 - 18,432 + 2*1024 = 22,070,281.
    """
    def counts(model: CheXtriev) -> tuple[int, int]:
        projection = sum(p.numel() for name, p in model.named_parameters() if name.startswith("projection."))
        return projection, sum(p.numel() for p in model.parameters()) - projection

    projection, frozen_edges_gt = counts(_paper(train_edges=False))
    assert projection == 3_147_776
    assert 22_050_000 <= frozen_edges_gt < 22_150_000  # rounds to the notes' 22.1M
    assert frozen_edges_gt == 22_086_665
    assert counts(_paper()) == (projection, frozen_edges_gt + NUM_REGIONS * NUM_REGIONS * 1024)
    assert counts(_paper("V1")) == (projection, 22_070_281)


def test_bfloat16_embeddings_match_float32_at_paper_size():
    torch.manual_seed(0)
    model = CheXtriev(ModelConfig.for_variant("V6", 2048)).eval()
    x = region_features(4, input_dim=2048)
    with torch.no_grad():
        reference = model(x).embedding
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(x).embedding
        converted = model.to(torch.bfloat16)(x.bfloat16()).embedding
    for embedding in (autocast, converted):
        assert embedding.dtype == torch.bfloat16
        assert (F.cosine_similarity(embedding.float(), reference, dim=-1) > 0.99).all()
