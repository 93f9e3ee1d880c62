import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from saeuron.sae import Sae, SaeConfig, geometric_median
from saeuron.sae.model import _topk_indices
from saeuron.sae.sparse import batch_topk_indices
from saeuron.sae.trainer import SaeTrainConfig, SaeTrainer


def make_sae(d=16, f=64, k=4, **kw):
    torch.manual_seed(0)
    return Sae(d, SaeConfig(num_latents=f, k=k, **kw))


def test_topk_keeps_exactly_k_per_row():
    sae = make_sae(k=5)
    x = torch.randn(3, 7, 16)
    acts, indices = sae.encode(x)
    assert acts.shape == indices.shape == (3, 7, 5)
    assert all(len(set(row.tolist())) == 5 for row in indices.reshape(-1, 5))
    code = sae(x.reshape(-1, 16)).code
    assert torch.equal(torch.bincount(code.rows, minlength=21), torch.full((21,), 5))


def test_batch_topk_keeps_k_times_n_per_batch_and_is_exact():
    sae = make_sae(k=4, batch_topk=True)
    x = torch.randn(32, 16)
    code = sae(x).code
    assert code.values.numel() == 4 * 32
    assert torch.bincount(code.rows, minlength=32).float().std() > 0  # variable per row
    pre = F.relu(sae.encoder(x - sae.b_dec)).detach()
    threshold = pre.flatten().topk(4 * 32).values.min()
    assert bool((code.values >= threshold).all())


def test_batch_topk_falls_back_when_one_row_owns_more_than_its_candidates():
    pre = torch.rand(8, 100)
    pre[3] += 10.0  # row 3 holds all of the batch's top 8·2 entries
    rows, latents = batch_topk_indices(pre, k=2, candidates_per_row=4)
    flat = pre.flatten().topk(16).indices
    assert sorted((rows * 100 + latents).tolist()) == sorted(flat.tolist())
    assert bool((rows == 3).all())


def test_fused_backward_matches_dense_autograd():
    for batch_topk in (False, True):
        sae = make_sae(batch_topk=batch_topk).double()
        x = torch.randn(12, 16, dtype=torch.double)
        dead = torch.zeros(64, dtype=torch.bool)
        dead[::3] = True
        out = sae(x, dead_mask=dead)
        (out.fvu + out.auxk_loss).backward()
        fused = {name: p.grad.clone() for name, p in sae.named_parameters()}
        sae.zero_grad()

        pre = F.relu(sae.encoder(x - sae.b_dec))
        mask = torch.zeros_like(pre)
        mask[out.code.rows, out.code.latents] = 1
        recon = (pre * mask) @ sae.W_dec + sae.b_dec
        total_variance = (x - x.mean(0)).pow(2).sum()
        fvu = (recon - x).pow(2).sum() / total_variance
        select = batch_topk_indices if batch_topk else _topk_indices
        rows, latents = select(pre.detach().masked_fill(~dead, float("-inf")), 8)
        aux_mask = torch.zeros_like(pre)
        aux_mask[rows, latents] = 1
        aux = ((pre * aux_mask) @ sae.W_dec - (x - recon).detach()).pow(2).sum() / total_variance
        (fvu + aux).backward()
        torch.testing.assert_close(out.fvu, fvu)
        torch.testing.assert_close(out.auxk_loss, aux)
        for name, p in sae.named_parameters():
            torch.testing.assert_close(fused[name], p.grad, msg=name)


def test_sparse_decode_matches_dense_decode():
    sae = make_sae()
    x = torch.randn(5, 16)
    acts, indices = sae.encode(x)
    dense = torch.zeros(5, 64).scatter(1, indices, acts)
    torch.testing.assert_close(sae.decode(acts, indices), dense @ sae.W_dec + sae.b_dec)


def test_decoder_norms_stay_one_after_a_step_and_parallel_gradient_is_removed():
    sae = make_sae()
    trainer = SaeTrainer(sae, SaeTrainConfig(lr=1e-2), total_steps=10)
    x = torch.randn(64, 16)
    out = sae(x)
    out.fvu.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    parallel = (sae.W_dec.grad * sae.W_dec.data).sum(1)
    assert parallel.abs().max() < 1e-6
    sae.zero_grad()
    trainer.step(x)
    trainer.step(x)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))


def test_auxk_is_zero_when_no_latent_is_dead_and_positive_otherwise():
    sae = make_sae()
    x = torch.randn(32, 16)
    assert sae(x, dead_mask=torch.zeros(64, dtype=torch.bool)).auxk_loss.item() == 0.0
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:10] = True
    assert sae(x, dead_mask=dead).auxk_loss.item() > 0.0


def test_dead_latents_are_counted_by_vectors_since_fired():
    sae = make_sae()
    trainer = SaeTrainer(sae, SaeTrainConfig(dead_feature_threshold=100), total_steps=10)
    x = torch.randn(64, 16)
    trainer.step(x)
    trainer.step(x)
    fired = trainer.vectors_since_fired == 0
    assert fired.any()
    assert bool((trainer.vectors_since_fired[~fired] >= 64).all())
    assert torch.equal(trainer.dead_mask, trainer.vectors_since_fired > 100)


def test_geometric_median_by_hand():
    # On a line the geometric median is the median: 1, not the mean 11/3.
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    torch.testing.assert_close(geometric_median(points), torch.tensor([1.0, 0.0]), atol=1e-3, rtol=0)
    # A square's corners: the centre.
    square = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    torch.testing.assert_close(geometric_median(square), torch.tensor([1.0, 1.0]))
    # Triangle with a vertex angle over 120°: the median is that vertex.
    obtuse = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.1]])
    torch.testing.assert_close(geometric_median(obtuse), torch.zeros(2), atol=2e-3, rtol=0)


def test_first_step_sets_b_dec_to_geometric_median():
    sae = make_sae()
    trainer = SaeTrainer(sae, SaeTrainConfig(lr=0.0), total_steps=1)
    x = torch.randn(50, 16) + 3.0
    trainer.step(x)
    torch.testing.assert_close(sae.b_dec.data, geometric_median(x))


def write_reference_checkpoint(folder, d=8, f=32, k=3, extra_cfg=None):
    """What the reference code writes: its SaeConfig fields plus d_in, and four tensors."""
    folder.mkdir(parents=True)
    cfg = {
        "expansion_factor": 4,
        "normalize_decoder": True,
        "num_latents": f,
        "k": k,
        "batch_topk": True,
        "sample_topk": False,
        "input_unit_norm": False,
        "multi_topk": False,
        "d_in": d,
        **(extra_cfg or {}),
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(1)
    tensors = {
        "encoder.weight": torch.randn(f, d, generator=g),
        "encoder.bias": torch.randn(f, generator=g) * 0.1,
        "W_dec": torch.randn(f, d, generator=g),
        "b_dec": torch.randn(d, generator=g),
    }
    save_file(tensors, str(folder / "sae.safetensors"))
    return tensors


def test_reference_checkpoint_loads_and_gives_reference_outputs(tmp_path):
    tensors = write_reference_checkpoint(tmp_path / "unet.up_blocks.1.attentions.1")
    sae = Sae.load_from_disk(tmp_path / "unet.up_blocks.1.attentions.1")
    assert sae.inference_mode == "topk" and sae.cfg.batch_topk
    x = torch.randn(2, 5, 8)
    acts, indices = sae.encode(x)
    pre = F.relu((x - tensors["b_dec"]) @ tensors["encoder.weight"].T + tensors["encoder.bias"])
    ref_acts, ref_indices = pre.topk(3, sorted=False)
    torch.testing.assert_close(acts.sort(-1).values, ref_acts.sort(-1).values)
    recon = sae.decode(acts, indices)
    dense = torch.zeros(2, 5, 32).scatter(-1, ref_indices, ref_acts)
    torch.testing.assert_close(recon, dense @ tensors["W_dec"] + tensors["b_dec"])

    sae.save_to_disk(tmp_path / "copy")
    again = Sae.load_from_disk(tmp_path / "copy")
    for name, tensor in sae.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name])
    written = json.loads((tmp_path / "copy" / "cfg.json").read_text())
    reference_keys = json.loads((tmp_path / "unet.up_blocks.1.attentions.1" / "cfg.json").read_text()).keys()
    assert set(reference_keys) <= set(written)
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["cfg.json", "sae.safetensors"]


def test_atomic_writes_land_whole_or_not_at_all(tmp_path):
    from saeuron.atomic_files import atomic_path, atomic_paths, write_text_atomic

    write_text_atomic(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "a.json").read_text() == "old"
    with atomic_paths(tmp_path / "a.json", tmp_path / "b.png", suffix=".png") as (a, b):
        assert a.name == ".a.json.tmp.png" and b.parent == tmp_path
        a.write_text("new")
        b.write_bytes(b"img")
        assert not (tmp_path / "b.png").exists()
    assert (tmp_path / "a.json").read_text() == "new" and (tmp_path / "b.png").read_bytes() == b"img"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.png"]


def test_unknown_cfg_fields_warn_and_bad_shapes_fail(tmp_path):
    write_reference_checkpoint(tmp_path / "a", extra_cfg={"from_the_future": 1})
    with pytest.warns(UserWarning, match="from_the_future"):
        Sae.load_from_disk(tmp_path / "a")
    write_reference_checkpoint(tmp_path / "b", extra_cfg={"num_latents": 31})
    with pytest.raises(ValueError, match="encoder.weight"):
        Sae.load_from_disk(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        Sae.load_from_disk(tmp_path)


def test_load_many_reads_one_folder_per_hookpoint(tmp_path):
    for name in ("unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"):
        write_reference_checkpoint(tmp_path / name)
    saes = Sae.load_many(tmp_path)
    assert list(saes) == ["unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"]
    with pytest.raises(FileNotFoundError, match="available"):
        Sae.load_many(tmp_path, hookpoints=["unet.mid_block.attentions.0"])
    with pytest.raises(FileNotFoundError, match="load_from_disk"):
        Sae.load_many(tmp_path / "unet.up_blocks.1.attentions.1")


def test_learned_threshold_is_saved_and_used_for_inference(tmp_path):
    sae = make_sae(batch_topk=True)
    trainer = SaeTrainer(sae, SaeTrainConfig(), total_steps=5)
    for _ in range(3):
        trainer.step(torch.randn(64, 16))
    assert sae.cfg.threshold is not None and sae.cfg.threshold > 0
    sae.save_to_disk(tmp_path / "sae")
    loaded = Sae.load_from_disk(tmp_path / "sae")
    assert loaded.inference_mode == "threshold"
    acts, _ = loaded.encode(torch.randn(10, 16))
    assert acts.shape[-1] == 4 * 4
    nonzero = acts[acts > 0]
    assert bool((nonzero > sae.cfg.threshold).all())
    topk = Sae.load_from_disk(tmp_path / "sae", inference="topk")
    assert topk.encode(torch.randn(10, 16)).top_acts.shape[-1] == 4


def test_sample_topk_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="sample_topk"):
        SaeConfig(sample_topk=True)


def test_input_unit_norm_reconstructs_in_input_space():
    sae = make_sae(input_unit_norm=True, f=256, k=64)
    x = torch.randn(4, 16) * 5 + 7
    mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True) + 1e-5
    normed = (x - mean) / std
    pre = F.relu(sae.encoder(normed - sae.b_dec))
    acts, indices = pre.topk(64)
    expected = (torch.zeros(4, 256).scatter(1, indices, acts) @ sae.W_dec + sae.b_dec) * std + mean
    torch.testing.assert_close(sae(x).sae_out, expected)
    torch.testing.assert_close(sae.reconstruct(x), expected)


def test_multi_topk_adds_a_wider_reconstruction_term():
    sae = make_sae(multi_topk=True)
    x = torch.randn(16, 16)
    pre = F.relu(sae.encoder(x - sae.b_dec))
    acts, indices = pre.topk(16)
    wide = torch.zeros(16, 64).scatter(1, indices, acts) @ sae.W_dec + sae.b_dec
    expected = (wide - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    torch.testing.assert_close(sae(x).multi_topk_fvu, expected)
    assert make_sae()(x).multi_topk_fvu.item() == 0.0


def test_training_learns_a_sparse_dictionary():
    # Data made of 3-sparse combinations of 32 directions: a k=3 SAE must explain most of it.
    g = torch.Generator().manual_seed(0)
    atoms = F.normalize(torch.randn(32, 16, generator=g), dim=1)

    def batch(n=256):
        idx = torch.rand(n, 32, generator=g).topk(3).indices
        coef = torch.rand(n, 3, generator=g) + 0.5
        return torch.zeros(n, 32).scatter(1, idx, coef) @ atoms

    sae = make_sae(f=64, k=3, batch_topk=True)
    trainer = SaeTrainer(sae, SaeTrainConfig(lr=1e-2, lr_schedule="constant", dead_feature_threshold=2000), total_steps=300)
    first = trainer.step(batch())
    for _ in range(300):
        last = trainer.step(batch())
    # Measured: FVU 0.59 at the first step, 0.11 after 250 steps (0.10-0.11 over lr 3e-3..1e-2).
    assert first.fvu > 0.5
    assert last.fvu < 0.2, last


def straight_and_half_way():
    """A trainer run for 6 steps, one run for the first 3 of the same steps, and the data."""
    data = [torch.randn(32, 16, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    straight = SaeTrainer(make_sae(batch_topk=True), SaeTrainConfig(), total_steps=6)
    for x in data:
        straight.step(x)
    first = SaeTrainer(make_sae(batch_topk=True), SaeTrainConfig(), total_steps=6)
    for x in data[:3]:
        first.step(x)
    return straight, first, data


def test_trainer_state_resumes_to_identical_parameters():
    straight, first, data = straight_and_half_way()
    resumed_sae = make_sae(batch_topk=True)
    resumed_sae.load_state_dict(first.sae.state_dict())
    resumed = SaeTrainer(resumed_sae, SaeTrainConfig(), total_steps=6)
    resumed.load_state_dict(first.state_dict())
    for x in data[3:]:
        resumed.step(x)
    for name, tensor in straight.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[name], tensor, rtol=0, atol=0)
    assert resumed.sae.cfg.threshold == straight.sae.cfg.threshold


def test_checkpoint_on_disk_resumes_to_identical_parameters(tmp_path):
    from saeuron.sae.checkpoint import load_checkpoint, save_checkpoint

    straight, first, data = straight_and_half_way()
    save_checkpoint(tmp_path, "unet.up_blocks.1.attentions.1", first, extra={"epoch": 0, "batches_done": 3})
    # Only formats ordinary tools open: the SAE in the published layout and the trainer state as safetensors + JSON.
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [
        "trainer_state.json",
        "trainer_state.safetensors",
        "unet.up_blocks.1.attentions.1/cfg.json",
        "unet.up_blocks.1.attentions.1/sae.safetensors",
    ]
    assert json.loads((tmp_path / "trainer_state.json").read_text())["extra"] == {"epoch": 0, "batches_done": 3}
    torch.manual_seed(99)
    resumed = SaeTrainer(make_sae(batch_topk=True), SaeTrainConfig(), total_steps=6)
    assert load_checkpoint(tmp_path, resumed) == {"epoch": 0, "batches_done": 3}
    for x in data[3:]:
        resumed.step(x)
    for name, tensor in straight.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[name], tensor, rtol=0, atol=0)
    assert resumed.step_count == 6 and resumed.scheduler.get_last_lr() == straight.scheduler.get_last_lr()


def test_one_fingerprint_in_every_dtype_until_training_changes_the_weights(tmp_path):
    sae = make_sae()
    sae.save_to_disk(tmp_path / "sae")
    prints = {
        dtype: Sae.load_from_disk(tmp_path / "sae", dtype=dtype).fingerprint() for dtype in (None, torch.float16, torch.bfloat16)
    }
    assert set(prints.values()) == {sae.fingerprint()}, prints
    # bf16 rounds the weights away from their fp16 hash: only the hash of the stored weights holds.
    bf16 = Sae.load_from_disk(tmp_path / "sae", dtype=torch.bfloat16)
    bf16.loaded_fingerprint = None
    assert bf16.fingerprint() != sae.fingerprint()
    trained = Sae.load_from_disk(tmp_path / "sae")
    SaeTrainer(trained, SaeTrainConfig(), total_steps=1).step(torch.randn(32, 16))
    assert trained.fingerprint() != sae.fingerprint()


def _reference_auxk(sae, x, dead, batch_topk):
    """The reference's AuxK loss (method notes §2.2), written out densely: k_aux = min(d/2, |D|), scale
    min(|D| / (d/2), 1), the dead latents' reconstruction including b_dec fitting e = x̂ − x, e not detached."""
    n, d = x.shape
    pre = F.relu(sae.encoder(x - sae.b_dec))

    def dense_top(values, k):
        if batch_topk:
            flat = values.flatten().topk(k * n).indices
            return torch.zeros_like(pre).flatten().index_put((flat,), pre.flatten()[flat]).view_as(pre)
        return torch.zeros_like(pre).scatter(1, values.topk(k, dim=1).indices, pre.gather(1, values.topk(k, dim=1).indices))

    e = dense_top(pre.detach(), sae.cfg.k) @ sae.W_dec + sae.b_dec - x
    half = d // 2
    k_aux, scale = min(half, int(dead.sum())), min(int(dead.sum()) / half, 1.0)
    e_hat = dense_top(pre.detach().masked_fill(~dead, float("-inf")), k_aux) @ sae.W_dec + sae.b_dec
    return scale * (e_hat - e).pow(2).sum() / (x - x.mean(0)).pow(2).sum()


@pytest.mark.parametrize("batch_topk", [False, True])
def test_auxk_reference_reproduces_the_reference_loss_and_gradient(batch_topk):
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(3), dtype=torch.double)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[[5, 17, 40]] = True  # 3 dead of d/2 = 8: the loss is scaled by 3/8
    ours_sae = make_sae(batch_topk=batch_topk).double()
    ours = ours_sae(x, dead_mask=dead, auxk_reference=True).auxk_loss
    ours.backward()
    theirs_sae = make_sae(batch_topk=batch_topk).double()
    theirs = _reference_auxk(theirs_sae, x, dead, batch_topk)
    theirs.backward()
    torch.testing.assert_close(ours, theirs)
    for (name, a), b in zip(ours_sae.named_parameters(), theirs_sae.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
