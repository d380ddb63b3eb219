"""mixed_precision="auto" and the threads of training processes sharing a machine (bert_core.training.hardware)."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time

import pytest
import torch

from bert_core.downstream.classification import FinetuneConfig
from bert_core.downstream.finetune import run_key
from bert_core.training import hardware

AMX_EPYC = {"model": "Intel(R) Xeon(R) Platinum 8480+", "flags": frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"})}
BF16_EPYC = {"model": "AMD EPYC 9R14", "flags": frozenset({"avx2", "avx512f", "avx512_bf16"})}
AVX2_EPYC = {"model": "AMD EPYC 7R13", "flags": frozenset({"avx2", "fma"})}
BF16_XEON = {"model": "Intel(R) Xeon(R) Processor", "flags": frozenset({"avx2", "avx512f", "avx512_bf16"})}
# what the probe measures on each kind (fp32 time / bf16 time): bf16 units that pay, and ones that do not
SPEEDUPS = {AMX_EPYC["model"]: 3.0, BF16_EPYC["model"]: 1.9, BF16_XEON["model"]: 0.65}


@pytest.fixture
def probes(monkeypatch, tmp_path):
    """The bf16 probe's measurements, faked per CPU model and counted; its cache in a fresh directory."""
    monkeypatch.setenv("BERTFLOW_HARDWARE_CACHE", str(tmp_path / "hardware"))
    monkeypatch.setattr(hardware, "_PROBES", {})
    measured = []

    def measure(repeats=5):
        model = hardware.cpu_info()["model"]
        measured.append(model)
        return {"fp32_ms": 100.0, "bf16_ms": 100.0 / SPEEDUPS[model], "speedup": SPEEDUPS[model]}
    monkeypatch.setattr(hardware, "measure_bf16_speedup", measure)
    monkeypatch.setattr(hardware, "cpu_reading", lambda: None)  # no load reading: kept, unless a test says not
    return measured


@pytest.fixture
def cpu(monkeypatch, probes):
    """Pretend to run on a given CPU without CUDA, with no BERTFLOW_MIXED_PRECISION override."""
    monkeypatch.delenv(hardware.PRECISION_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def use(info):
        monkeypatch.setattr(hardware, "cpu_info", lambda: info)
    return use


def test_this_machines_cpu_is_read_from_proc_cpuinfo():
    info = hardware.cpu_info()
    assert info["model"] and info["model"] != "unknown CPU"
    if platform.machine() == "x86_64":
        assert {"fpu", "sse2"} <= info["flags"]  # every x86-64 CPU reports them
    described = hardware.machine_description()
    assert described["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert described["cpu_bf16"] == (hardware.cpu_bf16_unit() or "none (bf16 emulated)")


@pytest.mark.parametrize("info, expected, unit", [(AMX_EPYC, "bf16", "amx_bf16"), (BF16_EPYC, "bf16", "avx512_bf16"),
                                                  (AVX2_EPYC, "no", None)])
def test_auto_picks_bf16_only_on_cpus_with_bf16_units(cpu, probes, caplog, info, expected, unit):
    cpu(info)
    assert hardware.cpu_bf16_unit() == unit
    with caplog.at_level(logging.INFO, logger="bert_core.training.hardware"):
        assert hardware.resolve_mixed_precision("auto") == expected
    assert f"mixed_precision auto -> {expected}" in caplog.text and info["model"] in caplog.text
    assert probes == ([info["model"]] if unit else [])  # no flag: fp32 without measuring
    assert hardware.resolve_mixed_precision("no") == "no"  # explicit values are kept


def test_a_bf16_flag_whose_measured_speed_does_not_pay_gets_fp32(cpu):
    """An AVX512-BF16 Xeon without AMX ran bf16 fine-tuning at 0.65x fp32: the flag is there, the speed is not."""
    cpu(BF16_XEON)
    choice, why = hardware.auto_precision()
    assert choice == "no" and "has avx512_bf16, but bf16 measured 0.65x fp32" in why
    assert why.endswith(f"under the {hardware.BF16_MIN_SPEEDUP}x bf16 needs: fp32")


def test_the_probe_runs_once_per_kind_of_machine_and_its_file_is_kept(cpu, probes, monkeypatch, tmp_path):
    cpu(BF16_EPYC)
    first = hardware.auto_precision()
    assert first[0] == "bf16" and "measured now, kept in" in first[1]
    files = list((tmp_path / "hardware").glob("bf16-probe-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["speedup"] == 1.9
    monkeypatch.setattr(hardware, "_PROBES", {})  # a new process on the same machine reads the file
    assert hardware.auto_precision()[0] == "bf16" and probes == [BF16_EPYC["model"]]
    assert f"cached in {files[0]}" in hardware.auto_precision()[1]
    files[0].write_text("{not json")  # a torn or hand-edited file is measured again, not trusted
    monkeypatch.setattr(hardware, "_PROBES", {})
    assert hardware.auto_precision()[0] == "bf16" and len(probes) == 2
    monkeypatch.setattr(torch, "__version__", "9.9.9")  # another torch build is another kind of machine
    monkeypatch.setattr(hardware, "_PROBES", {})
    hardware.auto_precision()
    assert len(probes) == 3 and len(list((tmp_path / "hardware").glob("bf16-probe-*.json"))) == 2


def test_a_probe_taken_beside_other_load_is_used_but_not_kept(cpu, probes, monkeypatch, tmp_path):
    """A probe that ran while other processes kept a core busy (a test suite, a training run) measured the
    neighbour as much as the machine: this process uses it, the next run measures again."""
    cpu(BF16_EPYC)
    # In one second the cores were 1.5 CPU-seconds busier, 0.3 of them this process's.
    readings = iter([(100.0, 5.0, 10.0), (101.5, 5.3, 11.0)])
    monkeypatch.setattr(hardware, "cpu_reading", lambda: next(readings))
    choice, why = hardware.auto_precision()
    assert choice == "bf16" and "beside other load (1.2 cores busy elsewhere), so not kept" in why
    assert not list((tmp_path / "hardware").glob("bf16-probe-*.json"))


def test_cpu_readings_see_a_neighbour_and_not_this_process():
    """/proc/stat's busy time of this process's cores, less this process's own CPU time: a spinning child counts,
    this process spinning does not."""
    assert hardware.cpu_reading() is not None  # Linux: /proc/stat

    def spin(seconds):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    before = hardware.cpu_reading()
    spin(1.0)
    alone = hardware.cores_busy_elsewhere(before, hardware.cpu_reading())
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.5)  # the child started and spinning
        before = hardware.cpu_reading()
        time.sleep(1.5)
        beside = hardware.cores_busy_elsewhere(before, hardware.cpu_reading())
    finally:
        child.kill()
        child.wait()
    assert alone < 0.5 < beside, (alone, beside)


def test_the_real_probe_times_fp32_and_bf16_on_this_machine():
    """The measurement itself (not faked), also from inside no_grad, where a run's evaluation may resolve "auto"."""
    with torch.no_grad():
        probe = hardware.measure_bf16_speedup(repeats=1)
    assert probe["fp32_ms"] > 0 and probe["bf16_ms"] > 0
    assert probe["speedup"] == pytest.approx(probe["fp32_ms"] / probe["bf16_ms"])


def test_explicit_bf16_on_a_cpu_without_bf16_units_warns_and_runs_as_asked(cpu):
    cpu(AVX2_EPYC)
    with pytest.warns(UserWarning, match="AMD EPYC 7R13, which has no bf16 units"):
        assert hardware.resolve_mixed_precision("bf16") == "bf16"
    cpu(BF16_EPYC)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hardware.resolve_mixed_precision("bf16") == "bf16"


def test_the_environment_overrides_what_auto_means(cpu, monkeypatch):
    cpu(AMX_EPYC)
    monkeypatch.setenv(hardware.PRECISION_ENV, "no")
    assert hardware.auto_precision() == ("no", f"{hardware.PRECISION_ENV}=no")
    monkeypatch.setenv(hardware.PRECISION_ENV, "fp8")
    with pytest.raises(ValueError, match="BERTFLOW_MIXED_PRECISION is 'fp8'; expected 'no', 'bf16' or 'fp16'"):
        hardware.auto_precision()


def test_a_stage_key_hashes_the_precision_that_runs_not_auto(cpu, tmp_path):
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).write_text("sentence\tlabel\ngood\t1\n")
    config = dict(model_name_or_path="m", train_file=str(tmp_path / "train.tsv"),
                  validation_file=str(tmp_path / "dev.tsv"), output_dir=str(tmp_path / "out"))
    (tmp_path / "m").mkdir()
    keys = {}
    for info in (BF16_EPYC, AVX2_EPYC):
        cpu(info)
        keys[info["model"]] = {p: run_key(FinetuneConfig(**config, mixed_precision=p), str(tmp_path / "m"), version=1)
                               for p in ("auto", "no", "bf16")}
    bf16_machine, fp32_machine = keys[BF16_EPYC["model"]], keys[AVX2_EPYC["model"]]
    assert bf16_machine["auto"] == bf16_machine["bf16"] != fp32_machine["auto"] == fp32_machine["no"]
    threads = run_key(FinetuneConfig(**config, num_threads=1), str(tmp_path / "m"), version=1)
    assert threads == fp32_machine["auto"]  # how many threads computed it is not part of what was computed


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_training_processes_share_the_cores(tmp_path, monkeypatch, threads_restored):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(hardware, "available_cores", lambda: 8)
    registry = tmp_path / "registry"
    with hardware.ThreadShare(registry=registry) as share:
        assert (registry / str(os.getpid())).is_file()
        assert share.threads == torch.get_num_threads() == 8
        others = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(3)]
        try:
            for other in others:
                (registry / str(other.pid)).touch()
            assert share.rebalance() == torch.get_num_threads() == 2  # 8 cores, 4 training processes
            others[0].kill()
            others[0].wait()
            assert share.rebalance() == 2  # 8 // 3
            assert not (registry / str(others[0].pid)).exists()  # a dead process's file is cleaned up
        finally:
            for other in others:
                other.kill()
                other.wait()
        assert share.rebalance() == 8
    assert not (registry / str(os.getpid())).exists()
    assert hardware.registered_processes(registry) == []


def test_given_threads_are_kept_and_not_registered(tmp_path, monkeypatch, threads_restored):
    registry = tmp_path / "registry"
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with hardware.ThreadShare(num_threads=1, registry=registry) as share:
        assert share.threads == torch.get_num_threads() == 1 and not registry.exists()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with hardware.ThreadShare(registry=registry) as share:  # the user's OMP_NUM_THREADS is a given count too
        assert share.fixed == 1 and not registry.exists()


def test_a_failed_pretraining_run_gives_its_thread_share_back(examples_dir, tmp_path, monkeypatch, threads_restored):
    """A pretraining run that fails after taking its share of the cores leaves the registry: in a long-lived
    process (a Prefect worker running flows in-process) a stale entry would halve every later run's threads."""
    from bert_core.training import pretrain as pretrain_module
    from tests.conftest import tiny_pretrain_config

    registry = tmp_path / "registry"
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("BERTFLOW_TRAINING_REGISTRY", str(registry))
    seen = []

    def failing_optimizer(*args, **kwargs):
        seen.append(hardware.registered_processes(registry))  # the share is taken when the run fails
        raise RuntimeError("optimizer failed")

    monkeypatch.setattr(pretrain_module, "build_optimizer", failing_optimizer)
    with pytest.raises(RuntimeError, match="optimizer failed"):
        pretrain_module.pretrain(tiny_pretrain_config(examples_dir, tmp_path / "run", resume_from_checkpoint=None))
    assert seen == [[os.getpid()]] and hardware.registered_processes(registry) == []
