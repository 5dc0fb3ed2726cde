"""The house rules of ARCHITECTURE.md, read from the import graph: the inference library (`model/`) and
the index store stand alone, the trainer builds on both, and the service reaches into the trainer only
in its `demo` command and the `bench embed` benchmark (a bundled radiograph). The library never imports
its trainer (as open_clip beside open_clip_train)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.architecture.import_graph import PACKAGES, cycles, imports_of, module_graph, project_imports

ALLOWED = {
    "model": {"model"},
    "index_store": {"index_store"},
    "trainer": {"trainer", "model", "index_store"},
    "service": {"service", "model", "index_store"},
}
# The service modules that use the trainer: `chextriev demo` (the offline build), `chextriev cases import`
# (the trainer's manifest reader) and the `bench embed`
# benchmark (a bundled radiograph).
SERVICE_MODULES_THAT_MAY_IMPORT_TRAINER = {"service.commands.demo", "service.commands.cases", "service.embed_bench",
                                           "service.http_bench"}


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_the_layout_allows(package: str) -> None:
    broken = [str(entry) for entry in project_imports()
              if entry.importer.split(".", 1)[0] == package and entry.package in PACKAGES
              and entry.package not in ALLOWED[package]
              and not (entry.package == "trainer" and entry.importer in SERVICE_MODULES_THAT_MAY_IMPORT_TRAINER)]
    assert not broken, "imports across the layout's lines:\n" + "\n".join(broken)


# The trainer's own stack; the service, the library and the index store never import it themselves.
OFFLINE_LIBRARIES = {"lightning", "pytorch_lightning", "torchmetrics", "scipy", "tqdm"}


@pytest.mark.parametrize("package", ["model", "index_store", "service"])
def test_serving_packages_do_not_import_the_offline_libraries(package: str) -> None:
    broken = [str(entry) for entry in project_imports()
              if entry.importer.split(".", 1)[0] == package and entry.package in OFFLINE_LIBRARIES
              and entry.importer not in SERVICE_MODULES_THAT_MAY_IMPORT_TRAINER]
    assert not broken, "\n".join(broken)


def test_the_demo_command_is_where_the_service_composes_the_trainer() -> None:
    importers = {entry.importer for entry in project_imports()
                 if entry.importer.startswith("service") and entry.package == "trainer"}
    assert importers == SERVICE_MODULES_THAT_MAY_IMPORT_TRAINER


def test_no_modules_import_each_other_in_a_cycle() -> None:
    assert cycles(module_graph()) == []


def test_the_reader_sees_imports_inside_functions_under_type_checking_and_relative(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from trainer.training import train\n"
                      "def late():\n    import service.app\nfrom .state import ServiceState\n")
    imported = {entry.imported for entry in imports_of(source, "service.probe")}
    assert {"trainer.training", "service.app", "service.state"} <= imported


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
