"""`chextriev bench http` on a built demo, with few requests: the report's shape, the servers it started
(the demo's warm start and a gallery grown with synthetic cases) and that every search answered 200.
Timings are the benchmark's output, not asserted here."""

from __future__ import annotations

import json
from pathlib import Path

from service.cli import main
from trainer.demo.build import DemoPaths, read_build_record

EXTRA = 200


def test_the_http_bench_measures_the_demo_and_a_grown_gallery(demo_dir: Path, tmp_path: Path) -> None:
    out, scratch = tmp_path / "http.json", tmp_path / "scratch"
    assert main(["bench", "http", "--work-dir", str(demo_dir), "--out", str(out), "--config", "fast",
                 "--requests", "2", "--clients", "1,2", "--extra-gallery", str(EXTRA),
                 "--scratch-dir", str(scratch)]) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_count"] >= 1 and report["command_line"]
    assert report["demo"]["snapshot_version"] == read_build_record(DemoPaths(demo_dir).record)["snapshot_version"]
    demo, grown = report["servers"]
    assert (demo["name"], demo["gallery_cases"]) == ("fast", 48)
    assert (grown["name"], grown["gallery_cases"], grown["compared_with"]) == (f"fast+{EXTRA}", 48 + EXTRA, "fast")
    assert report["warm_start_seconds"]["ready_seconds"] == demo["ready_seconds"] > 0
    assert report["warm_start_seconds"]["ready_cpu_seconds"] == demo["ready_cpu_seconds"] > 0
    for server in (demo, grown):
        assert [level["clients"] for level in server["levels"]] == [1, 2]
        assert [level["requests"] for level in server["levels"]] == [2, 4]  # at least 2 requests per client
        assert server["non_200"] == 0 and all(level["statuses"] == {"200": level["requests"]}
                                              for level in server["levels"])
        assert server["peak_rss_bytes"] >= server["final_rss_bytes"] > 0
        assert server["snapshot_bytes"] > 0 and server["database_bytes"] > 0
    # The grown snapshot holds whole-image vectors only (the demo's also has 18 region vectors per case).
    assert grown["database_bytes"] > demo["database_bytes"]
    assert [ratio["clients"] for ratio in grown["ratios"]] == [1, 2] and "ratios" not in demo  # no eager run
    # The grown server served the grown snapshot, recorded as active in its copy of the database.
    assert grown["environment"]["CHEXTRIEV_INDEX_STORE"].startswith(str(scratch))
    log = (scratch / "logs" / f"fast+{EXTRA}.log").read_text().splitlines()
    ready = [json.loads(line) for line in log if '"service ready"' in line]
    assert [entry["count"] for entry in ready] == [48 + EXTRA]
