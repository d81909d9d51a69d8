"""The text_agreement start rule of the GloFND-type detectors: a plain-python float64 reference of
the decision, 2 gloo processes equal to one, a state_dict round trip mid-epoch, config errors."""

from __future__ import annotations

import json

import pytest
import torch

from cli_helpers import SMALL, cli, one_line_error
from debiascl.errors import ConfigError
from debiascl.negatives.context import StepContext
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.negatives.text_sim import TextSimilarityDetector
from debiascl.pairs import clip_pairs
from distributed_helpers import run_distributed

N, GROUPS, DIM, GLOBAL_B = 24, 6, 8, 12
EPOCHS, START_EPOCH, SHARE = 5, 1, 0.3
TEXT_THRESHOLD = 0.9


def _texts() -> torch.Tensor:
    """One-hot text per group (ids i and i + 6k share group i % 6): cosine 1 or 0."""
    return torch.eye(GROUPS, dtype=torch.float64)[torch.arange(N) % GROUPS]


def _steps():
    """(epoch, ids, image, text) per step; images drift from random towards their group's
    direction, so the candidates above the thresholds become same-text pairs over the epochs."""
    g = torch.Generator().manual_seed(11)
    centres = torch.randn(GROUPS, DIM, generator=g)
    own = torch.randn(N, DIM, generator=g)
    for epoch in range(EPOCHS):
        w = 0.25 * epoch
        emb = (1 - w) * own + w * 1.5 * centres[torch.arange(N) % GROUPS]
        for ids in torch.randperm(N, generator=g).split(GLOBAL_B):
            a = emb[ids] + 0.3 * torch.randn(GLOBAL_B, DIM, generator=g)
            b = emb[ids] + 0.3 * torch.randn(GLOBAL_B, DIM, generator=g)
            yield epoch, ids, a, b


def _detector(**kw) -> GloFNDDetector:
    args = dict(
        mode="image_text",
        start_epoch=START_EPOCH,
        update_start_epoch=0,
        init="batch_quantile",
        lr=0.05,
        start_rule="text_agreement",
        text_embeddings=_texts(),
        text_threshold=TEXT_THRESHOLD,
        start_agreement=SHARE,
    )
    return GloFNDDetector(N, 0.2, **{**args, **kw})


def test_decision_matches_a_plain_python_reference():
    det = _detector()
    texts = _texts().tolist()
    counts: dict[int, list[int]] = {}  # epoch -> [candidates, agreeing]
    first_removal = None
    for step, (epoch, ids, a, b) in enumerate(_steps()):
        for batch in clip_pairs(a, b, ids):
            keep = det(batch, StepContext(epoch=epoch, step=step))
            if first_removal is None and bool((~keep & batch.neg_mask).any()):
                first_removal = epoch
            lam = det.thresholds(batch.name, batch.anchor_ids).double().tolist()
            sim = batch.sim.double().tolist()
            anchors, cands = batch.anchor_ids.tolist(), batch.candidate_ids.tolist()
            c = counts.setdefault(epoch, [0, 0])
            for i, row in enumerate(sim):
                for j, s in enumerate(row):
                    if anchors[i] == cands[j] or not s > lam[i]:
                        continue
                    c[0] += 1
                    t_a, t_c = texts[anchors[i]], texts[cands[j]]
                    cos = sum(x * y for x, y in zip(t_a, t_c, strict=True))
                    c[1] += cos >= TEXT_THRESHOLD
    shares = {e: c[1] / c[0] for e, c in counts.items() if c[0] > 0}
    # reference: the first epoch >= start_epoch after which the share reached the threshold
    want = next(
        (e for e in range(max(START_EPOCH, 1), EPOCHS) if shares.get(e - 1, 0.0) >= SHARE), None
    )
    assert want is not None and want > START_EPOCH, shares  # the rule really waited
    assert first_removal == want, (first_removal, shares)
    state = det.agreement_start.state
    assert float(state[0]) == 1.0 and int(state[3]) == want
    assert abs(float(state[4]) - shares[want - 1]) < 1e-12
    # after the start nothing more is counted (the epoch's counts stay at zero)
    assert float(state[1]) == 0.0
    diag = det.diagnostics()
    assert diag["start/started"] == 1.0
    assert abs(diag["start/candidate_text_agreement"] - shares[want - 1]) < 1e-12


def test_a_share_never_reached_never_starts():
    det = _detector(start_agreement=1.0)
    for step, (epoch, ids, a, b) in enumerate(_steps()):
        for batch in clip_pairs(a, b, ids):
            keep = det(batch, StepContext(epoch=epoch, step=step))
            assert bool(keep.all())
    assert float(det.agreement_start.state[0]) == 0.0


def _run(rank: int, world: int) -> dict:
    det = _detector()
    b = GLOBAL_B // world
    local = slice(rank * b, (rank + 1) * b)
    masks = []
    for step, (epoch, ids, a, bb) in enumerate(_steps()):
        for batch in clip_pairs(a[local], bb[local], ids[local]):
            masks.append(det(batch, StepContext(epoch=epoch, step=step)).clone())
    state = {k: v.clone() for k, v in det.state_dict().items() if isinstance(v, torch.Tensor)}
    return {"state": state, "masks": masks}


def _worker(rank: int, world: int) -> dict:
    return _run(rank, world)


@pytest.mark.distributed
def test_two_processes_equal_one(tmp_path):
    results = run_distributed(_worker, world_size=2, tmp_path=tmp_path)
    ref = _run(0, 1)
    assert sum(int((~m).sum()) for m in ref["masks"]) > 0  # masking started: not vacuous
    key = "agreement_start.state"
    for rank in range(2):
        got = results[rank]
        # the decision state is summed over ranks: identical everywhere and equal to one process
        torch.testing.assert_close(
            got["state"][key], ref["state"][key], rtol=0, atol=0, equal_nan=True
        )
        for name, want in ref["state"].items():
            torch.testing.assert_close(got["state"][name], want, rtol=1e-5, atol=1e-6)
        for mine, want in zip(got["masks"], ref["masks"], strict=True):
            half = GLOBAL_B // 2
            assert torch.equal(mine, want[rank * half : (rank + 1) * half])


def test_state_dict_round_trip_mid_epoch_continues_identically():
    steps = list(_steps())
    first = _detector()
    split = 5  # inside epoch 2, with candidates of epoch 2 already counted
    for step, (epoch, ids, a, b) in enumerate(steps[:split]):
        for batch in clip_pairs(a, b, ids):
            first(batch, StepContext(epoch=epoch, step=step))
    state = first.state_dict()
    assert "agreement_start.state" in state and float(state["agreement_start.state"][1]) > 0
    second = _detector()
    second.load_state_dict(state)
    started = []
    for step, (epoch, ids, a, b) in enumerate(steps[split:], start=split):
        for batch in clip_pairs(a, b, ids):
            ctx = StepContext(epoch=epoch, step=step)
            assert torch.equal(first(batch, ctx), second(batch, ctx))
        started.append(second.agreement_start.started)
    assert not started[0] and started[-1]  # the decision was taken after the reload
    assert torch.equal(first.agreement_start.state, second.agreement_start.state)


def test_without_texts_or_with_the_fixed_text_rule_is_a_config_error():
    with pytest.raises(ConfigError, match="caption/report"):
        GloFNDDetector(N, 0.2, start_rule="text_agreement")
    with pytest.raises(ConfigError, match="start_agreement"):
        _detector(start_agreement=0.0)
    with pytest.raises(ConfigError, match="learned thresholds"):
        TextSimilarityDetector(N, _texts(), text_rule="fixed", start_rule="text_agreement")


@pytest.mark.parametrize(
    ("config", "detector", "needle"),
    [
        ("digits_simclr", "glofnd", "has no texts"),
        ("digits_clip", "fnc", "not read by negatives.name=fnc"),  # refused at load
    ],
)
def test_cli_refuses_in_one_line(capsys, tmp_path, config, detector, needle):
    argv = ["train", config, "--run-dir", str(tmp_path / "r"), "--no-eval", *SMALL]
    argv += [f"negatives.name={detector}", "negatives.start_rule=text_agreement"]
    code, _, err = cli(capsys, argv)
    assert code == 2
    one_line_error(err, "start_rule=text_agreement", needle)


def test_runs_through_the_config_and_saves_its_state(tmp_path):
    from debiascl.cli import main

    run = tmp_path / "run"
    argv = ["train", "digits_clip", "--run-dir", str(run), "--no-eval"]
    argv += ["data.train_size=128", "train.batch_size=64", "train.epochs=2"]
    argv += ["negatives.name=glofnd", "negatives.glofnd.init=batch_quantile"]
    argv += ["negatives.start_epoch=1"]
    argv += ["negatives.update_start_epoch=0", "negatives.start_rule=text_agreement"]
    argv += ["negatives.text_encoder=tfidf", "negatives.start_agreement=0.01"]
    assert main(argv) == 0
    ckpt = sorted((run / "checkpoints").glob("*.pt"))[-1]
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    objective = next(v for k, v in saved.items() if "objective" in k)
    state = next(v for k, v in objective.items() if k.endswith("agreement_start.state"))
    assert int(state[3]) == 1 and float(state[4]) >= 0.01  # decided after epoch 0's counts
    assert float(state[0]) == 1.0  # so masking started in epoch 1 ...
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["negatives/removed_fraction"] > 0  # ... and removed negatives
    assert record["negatives/start/candidate_text_agreement"] == float(state[4])
