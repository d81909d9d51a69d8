"""Issue 10 items 13, 18, 19 and 21: `debiascl eval` on read-only runs and with evaluation data,
zero-shot prompts on a new dataset, the removed-fraction column and thin label fractions."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cli_helpers import SMALL, cli, one_line_error, train_argv
from debiascl.cli import main


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _manifests(root: Path, colour: bool = False) -> tuple[Path, Path]:
    """Train (40) and test (20) manifests of 8x8 PNGs: ``label`` (cat/dog by brightness),
    ``label2`` (a second column with blanks), ``text`` captions."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for split, n, blanks in (("train", 40, (0, 1, 2, 3, 4)), ("test", 20, (0, 1))):
        rows = []
        for i in range(n):
            c = i % 2
            shape = (8, 8, 3) if colour else (8, 8)
            pixels = (rng.integers(0, 100, shape) + 150 * c).astype(np.uint8)
            Image.fromarray(pixels).save(root / "img" / f"{split}{i:03d}.png")
            name = ["cat", "dog"][c]
            rows.append(
                {
                    "path": f"img/{split}{i:03d}.png",
                    "label": name,
                    "label2": None if i in blanks else f"g{i % 3}",
                    "text": f"a {'dark' if c == 0 else 'bright'} {name} number {i % 4}",
                }
            )
        paths.append(root / f"{split}.csv")
        pd.DataFrame(rows).to_csv(paths[-1], index=False)
    return paths[0], paths[1]


def _train(run: Path, train: Path, test: Path, *extra: str) -> list[str]:
    test_data = f"data.test_manifest={test}"
    return train_argv(run, train, test_data, "train.epochs=1", "eval.references=false", *extra)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished image-image manifest run (1 epoch, no evaluation yet)."""
    root = tmp_path_factory.mktemp("evalcmd")
    train, test = _manifests(root / "data")
    assert main(_train(root / "run", train, test)) == 0
    return root / "run"


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[str]:
    """Make ``path`` really read-only: a read-only bind mount (root), else chmod (non-root)."""
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        try:
            yield "chmod"
        finally:
            os.chmod(path, 0o755)
        return
    done = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount as root here: {done.stderr.decode().strip()}")
    try:
        remount = ["mount", "-o", "remount,ro,bind", str(path)]
        if subprocess.run(remount, capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield "read-only bind mount"
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


# ------------------------------------------------------------------ item 13: read-only runs
def test_eval_of_a_read_only_run_fails_before_any_work(capsys, run_dir, monkeypatch):
    import debiascl.compose.evaluation as evaluation

    calls = []
    real = evaluation.evaluate_model
    monkeypatch.setattr(
        evaluation, "evaluate_model", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    with read_only(run_dir):
        with pytest.raises(OSError):
            (run_dir / "probe").write_text("x")  # the fault is real
        code, _, err = cli(capsys, ["eval", str(run_dir)])
    assert code == 2
    one_line_error(err, "cannot write to", str(run_dir), "--output")
    assert calls == []  # refused before the evaluation ran


def test_eval_of_a_read_only_run_with_output_elsewhere(capsys, run_dir, tmp_path):
    before = snapshot(run_dir)
    out_file = tmp_path / "elsewhere" / "eval.json"
    with read_only(run_dir):
        code, out, err = cli(capsys, ["eval", str(run_dir), "--output", str(out_file)])
    assert code == 0, err
    saved = json.loads(out_file.read_text())
    assert "knn" in saved and "linear_probe" in saved
    assert f"results saved to {out_file}" in out
    assert snapshot(run_dir) == before


def test_eval_results_are_printed_when_the_disk_is_full(capsys, run_dir, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with contextlib.suppress(OSError), open(full / "filler", "wb") as fh:
            fh.write(b"\0" * 1024 * 1024)  # fill it: empty files can still be created
        code, out, err = cli(capsys, ["eval", str(run_dir), "--output", str(full / "eval.json")])
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)
    assert code == 3
    one_line_error(err, "could not be saved", "computed and printed")
    assert "kNN" in out and "trained" in out  # the results table reached stdout


def test_eval_output_or_run_dir_that_is_a_file(capsys, run_dir, tmp_path):
    code, _, err = cli(capsys, ["eval", str(run_dir), "--output", str(run_dir)])
    assert code == 2
    one_line_error(err, "is a folder")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, _, err = cli(capsys, ["eval", str(a_file)])
    assert code == 2
    one_line_error(err, "is not a run directory")


def test_train_into_a_file_or_a_read_only_folder_fails_before_any_work(
    capsys, tmp_path, monkeypatch
):
    import debiascl.train.trainer as trainer_module

    built = []
    monkeypatch.setattr(trainer_module, "build_data", lambda *a, **k: built.append(1))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    argv = ["train", "digits_simclr", "--no-eval", *SMALL]
    code, _, err = cli(capsys, [*argv, "--run-dir", str(a_file)])
    assert code == 2
    one_line_error(err, "is a file, not a folder", "--run-dir")
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder):
        code, _, err = cli(capsys, [*argv, "--run-dir", str(folder / "run")])
    assert code == 2
    one_line_error(err, "cannot write to", str(folder))
    assert built == []  # refused before the data were built


# ------------------------------------------------------------------ item 19: evaluation data
def test_eval_accepts_another_label_column_and_test_manifest(capsys, run_dir, tmp_path):
    train, test = _manifests(tmp_path / "other")
    small_test = tmp_path / "other" / "small_test.csv"
    pd.read_csv(test).iloc[:12].to_csv(small_test, index=False)
    code, _, err = cli(
        capsys,
        [
            "eval",
            str(run_dir),
            "data.label_column=label2",
            f"data.manifest={train}",
            f"data.test_manifest={small_test}",
        ],
    )
    assert code == 0, err
    results = json.loads((run_dir / "eval.json").read_text())
    # label2 leaves rows 0-4 of train and 0-1 of the 12 test rows blank: these numbers prove
    # that the evaluation read the new column and the new test manifest
    assert results["unlabelled_excluded"] == {"train": 5, "test": 2}
    assert results["linear_probe"]["100%"]["n_train"] == 35


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("data.image_size=16", "data.image_size"),
        ("data.channels=3", "data.channels"),
        ("data.mode=image_text", "data.mode"),
        ("data.augment=none", "data.augment"),
    ],
)
def test_eval_refuses_data_settings_the_model_was_trained_on(capsys, run_dir, override, needle):
    before = snapshot(run_dir)
    code, _, err = cli(capsys, ["eval", str(run_dir), override])
    assert code == 2
    one_line_error(err, f"cannot change {needle}", "data.test_manifest")
    assert snapshot(run_dir) == before


# ------------------------------------------------------------------ item 18: zero-shot prompts
@pytest.fixture(scope="module")
def clip_run(tmp_path_factory) -> Path:
    """An image-text run on a colour manifest with string labels and its own captions."""
    root = tmp_path_factory.mktemp("clipcmd")
    train, test = _manifests(root / "data", colour=True)
    argv = [
        "train",
        "digits_clip",
        "--run-dir",
        str(root / "run"),
        "--no-eval",
        "data.dataset=manifest",
        f"data.manifest={train}",
        f"data.test_manifest={test}",
        "data.channels=3",
        "train.epochs=1",
        *SMALL,
    ]
    assert main(argv) == 0
    return root / "run"


def test_zero_shot_on_a_manifest_uses_generic_prompts_and_shows_the_classes(capsys, clip_run):
    code, out, err = cli(capsys, ["eval", str(clip_run), "--output", str(clip_run / "a.json")])
    assert code == 0, err
    zs = json.loads((clip_run / "a.json").read_text())["zero_shot"]
    assert zs["class_names"] == ["cat", "dog"]
    assert zs["template_source"] == "generic"
    assert not any("grayscale" in t or "black-and-white" in t for t in zs["templates"])
    assert "a photo of a {}." in zs["templates"]
    assert "zero-shot classes (label order): cat, dog" in out


def test_zero_shot_templates_and_class_names_from_the_config(capsys, clip_run):
    from debiascl.config import load_config
    from debiascl.eval.features import encode_split
    from debiascl.eval.zero_shot import class_embeddings, zero_shot_eval
    from debiascl.train.trainer import Trainer

    overrides = ["eval.zero_shot_templates=['{} drawn small']", "eval.class_names={cat: kitty}"]
    out_file = clip_run / "b.json"
    code, out, err = cli(capsys, ["eval", str(clip_run), "--output", str(out_file), *overrides])
    assert code == 0, err
    zs = json.loads(out_file.read_text())["zero_shot"]
    assert zs["templates"] == ["{} drawn small"]
    assert zs["class_names"] == ["kitty", "dog"]
    assert "eval.zero_shot_templates" in out
    # the accuracy is that of exactly these prompts ("kitty drawn small", "dog drawn small")
    cfg = load_config(str(clip_run / "config.yaml"), ["checkpoint.resume=null"])
    trainer = Trainer(cfg, run_dir=clip_run)
    state = __import__("torch").load(zs_checkpoint(out_file), weights_only=True)
    trainer.model.load_state_dict(state["model"])
    trainer.objective.load_state_dict(state["objective"])
    trainer.model.eval()
    with __import__("torch").no_grad():
        image = encode_split(trainer.model, lambda m, x: m.encode_image(x), trainer.data, "test")
        emb = class_embeddings(trainer.model.encode_text, ["kitty", "dog"], ["{} drawn small"])
        ref = zero_shot_eval(image.features, image.labels, emb, trainer.objective.logit_scale)
    assert zs["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)


def zs_checkpoint(results_file: Path) -> str:
    return json.loads(results_file.read_text())["checkpoint"]


def test_builtin_dataset_keeps_its_caption_templates():
    from debiascl.config import load_config
    from debiascl.data.captions import prompt_templates
    from debiascl.eval.prompts import zero_shot_prompts

    cfg = load_config("digits_clip")
    prompts = zero_shot_prompts(["ankle boot", "zero"], cfg.data.dataset)
    assert prompts is not None and prompts.templates == prompt_templates()
    assert prompts.fill_names == ["an ankle boot", "a zero"]


# ------------------------------------------------------------------ item 21: the printed table
def test_train_table_has_the_removed_fraction_column(capsys, tmp_path):
    argv = [
        "train",
        "digits_simclr",
        "--run-dir",
        str(tmp_path / "run"),
        "negatives.name=fnc",
        "negatives.alpha=0.2",
        "data.train_size=128",
        "train.batch_size=32",
        "train.epochs=1",
        "eval.references=false",
        "model.width=4",
    ]
    code, out, err = cli(capsys, argv)
    assert code == 0, err
    removed = json.loads((tmp_path / "run" / "summary.json").read_text())["fn_detection"][
        "removed_fraction"
    ]
    assert removed > 0
    header, _, row = out.splitlines()[:3]
    columns = re.split(r"\s{2,}", header.strip())
    cells = re.split(r"\s{2,}", row.strip())
    assert len(cells) == len(columns) and "removed" in columns
    assert cells[columns.index("removed")] == f"{100 * removed:.1f}"


def test_thin_label_fraction_warns():
    from debiascl.eval.linear_probe import FALLBACK_C, LabelFractionWarning, linear_probe

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)  # 10 labels per class
    x = rng.normal(size=(30, 4)) + y[:, None]
    with pytest.warns(LabelFractionWarning, match=r"10% \(1 per class\)"):
        res = linear_probe(x, y, x, y, fractions=[0.1])
    assert res["10%"]["C"] == [FALLBACK_C]  # CV was impossible: the warning says so
    with warnings.catch_warnings():
        warnings.simplefilter("error", LabelFractionWarning)
        linear_probe(x, y, x, y, fractions=[0.2])  # 2 per class: no warning
