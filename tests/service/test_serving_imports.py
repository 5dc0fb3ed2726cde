"""Serving needs none of the trainer's stack: `chextriev serve` and a real search through the app never
import the trainer, Lightning or scipy (they stay installed for the offline commands, which share
the one image and environment). tqdm is not on the list: no serving module of ours imports it
(tests/architecture checks that), but torch.hub and huggingface_hub (a dependency of timm) import
it whenever it is installed, and huggingface_hub requires it.

The demo's warm start (a built demo: every step reused) imports the trainer's demo build, but not
Lightning and scipy, which only training needs, nor timm and torchvision, which only building the
backbone needs: they were most of a second start's import time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from tests.service.service_setup import QUERY_CASE, ServiceSetup, service_setup  # noqa: F401 - fixture
from tests.service.test_server_e2e import REPO_ROOT, environment

OFFLINE_ONLY = ("trainer", "lightning", "pytorch_lightning", "torchmetrics", "scipy")

SERVE_AND_SEARCH = textwrap.dedent("""
    import io, json, sys, time
    import numpy as np
    from fastapi.testclient import TestClient
    from PIL import Image
    from model.anatomy import boxes_by_name
    from service.cli import build_parser, command_modules
    from service.settings import get_settings

    build_parser(["serve"], command_modules())  # registers `serve` as the command line does
    from service.app import create_app

    case = np.load(sys.argv[1])
    png = io.BytesIO()
    Image.fromarray(np.round(case["pixels"] * 255).astype(np.uint8)).save(png, format="PNG")
    with TestClient(create_app(get_settings())) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.1)
        found = client.post("/search", files={"image": ("q.png", png.getvalue(), "image/png")},
                            data={"regions": json.dumps(boxes_by_name(case["boxes"])), "k": "3"})
        assert found.status_code == 200, found.text
        saliency = client.get("/saliency", params={"query_id": found.json()["query_id"],
                                                   "case_id": found.json()["results"][1]["case_id"]})
        assert saliency.status_code == 200, saliency.text
    loaded = sorted({name.split(".")[0] for name in sys.modules})
    print(json.dumps({"loaded": loaded}))
""")


def loaded_top_level_modules(arguments: list[str], env: dict[str, str]) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after running `arguments`."""
    completed = subprocess.run([sys.executable, *arguments], cwd=REPO_ROOT, env=env, capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return set(json.loads(completed.stdout.strip().splitlines()[-1])["loaded"])


def test_serving_a_search_and_saliency_loads_nothing_offline(service_setup: ServiceSetup, tmp_path) -> None:
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    query = tmp_path / "query.npz"
    np.savez(query, pixels=pixels, boxes=boxes)
    loaded = loaded_top_level_modules(["-c", SERVE_AND_SEARCH, str(query)], environment(service_setup))
    assert {"service", "model", "index_store", "torch", "fastapi"} <= loaded  # the probe saw the real thing
    assert not loaded & set(OFFLINE_ONLY), loaded & set(OFFLINE_ONLY)


def test_the_command_line_loads_only_the_chosen_subcommand(service_setup: ServiceSetup) -> None:
    probe = ("import json, sys\nfrom service.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n"
             "    pass\nprint(json.dumps({'loaded': sorted({n.split('.')[0] for n in sys.modules}),"
             " 'commands': sorted(n for n in sys.modules if '.commands.' in n)}))")
    for arguments in (["--help"], ["serve", "--help"]):
        completed = subprocess.run([sys.executable, "-c", probe, *arguments], cwd=REPO_ROOT, capture_output=True,
                                   text=True, timeout=120, env=environment(service_setup))
        report = json.loads(completed.stdout.strip().splitlines()[-1])
        assert not set(report["loaded"]) & set(OFFLINE_ONLY), arguments
        assert "torch" not in report["loaded"], arguments  # help is argparse alone: no model, no app
        expected = ["service.commands.serve"] if arguments[0] == "serve" else []
        assert report["commands"] == expected, arguments
    top_level_help = subprocess.run([sys.executable, "-m", "service.cli", "--help"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, timeout=120).stdout
    for command in ("demo", "serve", "db", "index", "bench", "features", "train", "evaluate", "embed"):
        assert f"\n    {command} " in top_level_help, command
    assert "run the frozen backbone" in top_level_help  # a summary read from the module's source


def test_a_warm_demo_start_loads_no_training_stack(demo_dir: Path) -> None:
    probe = ("import json, sys\nfrom service.cli import main\nassert main(sys.argv[1:]) == 0\n"
             "print(json.dumps({'loaded': sorted({n.split('.')[0] for n in sys.modules})}))")
    env = {name: value for name, value in os.environ.items() if name != "CHEXTRIEV_PATIENT_SALT"}
    completed = subprocess.run([sys.executable, "-c", probe, "demo", "--work-dir", str(demo_dir), "--build-only"],
                               cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    steps = json.loads(completed.stdout.strip().splitlines()[-2])["steps"]
    assert set(steps.values()) == {"reused"}, steps
    loaded = set(json.loads(completed.stdout.strip().splitlines()[-1])["loaded"])
    assert {"trainer", "torch", "onnxruntime"} <= loaded  # the probe ran the real warm build
    # nor the backbone's own stack: the fingerprint is the recorded one, the service loads the ONNX export
    assert not loaded & {"lightning", "pytorch_lightning", "torchmetrics", "scipy", "timm", "torchvision"}, loaded
