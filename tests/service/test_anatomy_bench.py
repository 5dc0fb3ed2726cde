"""`chextriev bench anatomy`: decode and region-finding times of the bundled radiographs at their own
size and upscaled, in one atomically written JSON report."""

from __future__ import annotations

import json

from model.anatomy_model import SHIPPED_MODEL
from service.cli import main


def test_report_times_every_size_and_finds_every_bundled_chest(tmp_path, capsys):
    out = tmp_path / "reports" / "anatomy.json"
    assert main(["bench", "anatomy", "--sides", "1024", "--rounds", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == str(SHIPPED_MODEL) and report["images"] == 48 and report["goal_ms"] == 150
    assert [size["longer_side"] for size in report["sizes"]] == ["own", 1024]
    assert max(report["sizes"][1]["example_size"]) == 1024
    for size in report["sizes"]:
        assert size["refused"] == 0
        for phase in ("decode", "anatomy"):
            assert 0 < size[phase]["p50_ms"] <= size[phase]["p90_ms"]
    assert [path.name for path in out.parent.iterdir()] == ["anatomy.json"]
    assert "anatomy p50" in capsys.readouterr().out
