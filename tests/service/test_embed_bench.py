"""`chextriev bench embed`: eager PyTorch and a fast CPU runtime timed on a bundled radiograph, with the
same embedding, in one atomically written JSON report; with a checkpoint, or a backbone given random weights."""

from __future__ import annotations

import json

import pytest

from service.cli import main
from tests.model.test_embedder import backbone, checkpoint_dir  # noqa: F401 - fixtures


def test_report_times_both_paths_on_the_same_embedding(checkpoint_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "reports" / "embed.json"
    arguments = ["bench", "embed", "--checkpoint", str(checkpoint_dir), "--out", str(out), "--repeats", "3"]
    assert main(arguments) == 0
    report = json.loads(out.read_text())
    assert (report["baseline"]["runtime"], report["fast"]["runtime"]) == ("torch", "onnx")
    for key in ("baseline", "fast"):
        assert 0 < report[key]["p50_ms"] <= report[key]["p90_ms"]
    assert report["p50_ratio"] == pytest.approx(report["baseline"]["p50_ms"] / report["fast"]["p50_ms"], rel=0.01)
    assert report["cosine"] >= 0.999 and report["repeats"] == 3 and report["case"].startswith("cxrlb-")
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["onnxruntime"]
    assert [path.name for path in out.parent.iterdir()] == ["embed.json"]  # no temporary file left
    assert "p50 ratio" in capsys.readouterr().out


def test_random_backbone_mode_needs_no_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "embed.json"
    arguments = ["bench", "embed", "--backbone", "efficientnet_lite0", "--runtime", "onnx", "--out", str(out),
                 "--repeats", "1"]
    assert main(arguments) == 0
    report = json.loads(out.read_text())
    assert report["checkpoint"] is None and report["backbone"] == "efficientnet_lite0"
    assert report["weights"].startswith("random (torch seed 0), network V6 at width 1024")
    assert (report["baseline"]["runtime"], report["fast"]["runtime"]) == ("torch", "onnx")
    assert report["cosine"] >= 0.999
    assert "efficientnet_lite0, weights: random" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    ([], "one of the arguments --checkpoint --backbone is required"),
    (["--checkpoint", "x", "--backbone", "resnet50"], "not allowed with argument"),
    (["--backbone", "vgg16"], "invalid choice: 'vgg16'"),
    (["--backbone", "resnet50", "--runtime", "torch"], "invalid choice: 'torch'"),
])
def test_embedder_and_fast_runtime_are_checked(arguments, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "embed", "--out", str(tmp_path / "x.json"), *arguments])
    assert message in capsys.readouterr().err and not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("repeats", ["0", "-1", "three"])
def test_repeats_must_be_a_positive_integer(repeats, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "embed", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.json"),
              "--repeats", repeats])
    assert "expected a positive integer" in capsys.readouterr().err


def test_unreadable_checkpoint_is_an_error_not_a_traceback(tmp_path, capsys):
    assert main(["bench", "embed", "--checkpoint", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "x.json")]) == 1
    assert "error:" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
