"""train.mixed_precision: auto picks the precision that is fast on the machine; explicit bf16 on a slow CPU warns."""
import math
import warnings

import pytest
import torch

from diffalign.config import ConfigError, OptimConfig, load_config
from diffalign.trainer import precision
from diffalign.trainer.distributed import has_accelerator_device, make_accelerator
from diffalign.trainer.precision import (PrecisionChoice, cpu_info, has_bf16_hardware, log_choice,
                                         probe_bf16_speedup, resolve_precision)

EPYC_AVX2 = {"model": "AMD EPYC 7B12", "flags": ["avx2"], "capability": "AVX2", "torch_threads": 1, "cpu_count": 2}
EPYC_BF16 = dict(EPYC_AVX2, model="AMD EPYC 9B14", flags=["avx2", "avx512f", "avx512_bf16"], capability="AVX512")
XEON_AMX = dict(EPYC_AVX2, model="Intel Xeon Platinum 8481C",
                flags=["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"])


def fake_cpu(monkeypatch, info, speedup=None):
    """cpu_info -> info; the probe returns `speedup`, or fails the test if None and it is called."""
    calls = []

    def probe(seconds_budget=0.5):
        calls.append(seconds_budget)
        if speedup is None:
            raise AssertionError("the probe ran although it should not")
        return speedup

    monkeypatch.setattr(precision, "cpu_info", lambda: dict(info))
    monkeypatch.setattr(precision, "probe_bf16_speedup", probe)
    monkeypatch.delenv(precision.PROBE_ENV, raising=False)
    return calls


@pytest.fixture(autouse=True)
def _auto_follows_the_machine(monkeypatch):
    # tests/conftest.py fixes ``auto`` to float32 for the rest of the suite; these tests check the rules themselves
    monkeypatch.delenv(precision.AUTO_ENV, raising=False)


@pytest.mark.parametrize("value", ["no", "bf16"])
def test_auto_env_fixes_the_cpu_choice_without_probing(monkeypatch, value):
    fake_cpu(monkeypatch, XEON_AMX, speedup=None)
    monkeypatch.setenv(precision.AUTO_ENV, value)
    choice = resolve_precision("auto", "cpu")
    assert choice.precision == value and precision.AUTO_ENV in choice.reason
    assert resolve_precision("no", "cpu").precision == "no"  # explicit settings are not affected
    monkeypatch.setenv(precision.AUTO_ENV, "fp8")
    with pytest.raises(ValueError, match="DIFFALIGN_AUTO_PRECISION"):
        resolve_precision("auto", "cpu")


def resolve_quietly(requested, device="cpu"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        choice = resolve_precision(requested, device)
    return choice, [str(w.message) for w in caught]


# --- cpu_info / has_bf16_hardware ---------------------------------------------------------------------------

def test_cpu_info_has_the_keys_and_only_known_flags():
    info = cpu_info()
    assert set(info) == {"model", "flags", "capability", "torch_threads", "cpu_count"}
    assert isinstance(info["model"], str) and info["model"]
    assert set(info["flags"]) <= set(precision.SPEED_FLAGS)
    assert info["torch_threads"] == torch.get_num_threads() and info["cpu_count"] >= 1


def test_cpu_info_parses_model_and_flags(tmp_path, monkeypatch):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 "
                    "sha_ni\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu amx_bf16\n")
    monkeypatch.setattr(precision, "CPUINFO_PATH", str(path))
    info = cpu_info()
    assert info["model"] == "AMD EPYC 9B14"
    assert info["flags"] == ["avx2", "avx512f", "avx512_bf16"]  # first processor's flags, only the relevant ones


def test_cpu_info_without_proc_cpuinfo(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "CPUINFO_PATH", str(tmp_path / "missing"))
    monkeypatch.setattr(precision.platform, "processor", lambda: "arm")
    info = cpu_info()
    assert info["flags"] == [] and info["model"] == "arm"
    assert has_bf16_hardware(info) is False


@pytest.mark.parametrize("info,expected", [(EPYC_AVX2, False), (EPYC_BF16, True), (XEON_AMX, True),
                                           ({"flags": []}, False)])
def test_has_bf16_hardware(info, expected):
    assert has_bf16_hardware(info) is expected


# --- resolve_precision on the CPU ---------------------------------------------------------------------------

def test_no_stays_no(monkeypatch):
    fake_cpu(monkeypatch, XEON_AMX)
    for device in ("cpu", torch.device("cpu")):
        choice, caught = resolve_quietly("no", device)
        assert (choice.precision, choice.requested, choice.probe_speedup, caught) == ("no", "no", None, [])


def test_auto_on_cpu_without_bf16_units_is_float32_without_probing(monkeypatch):
    calls = fake_cpu(monkeypatch, EPYC_AVX2)
    choice, caught = resolve_quietly("auto")
    assert choice.precision == "no" and choice.requested == "auto" and caught == [] and calls == []
    assert "no bf16 matrix units" in choice.reason and "AMD EPYC 7B12" in choice.reason
    assert choice.cpu_info["model"] == "AMD EPYC 7B12"


@pytest.mark.parametrize("info", [EPYC_BF16, XEON_AMX])
def test_auto_on_cpu_with_bf16_units_follows_the_probe(monkeypatch, info):
    calls = fake_cpu(monkeypatch, info, speedup=1.3)
    choice, caught = resolve_quietly("auto")
    assert (choice.precision, choice.probe_speedup, caught) == ("bf16", 1.3, []) and len(calls) == 1
    assert "1.30x faster" in choice.reason

    fake_cpu(monkeypatch, info, speedup=1.05)  # below the 1.1x bar: not worth the precision
    choice, caught = resolve_quietly("auto")
    assert (choice.precision, choice.probe_speedup, caught) == ("no", 1.05, [])


def test_auto_without_probe_trusts_only_amx(monkeypatch):
    fake_cpu(monkeypatch, XEON_AMX)
    monkeypatch.setenv(precision.PROBE_ENV, "0")
    choice, _ = resolve_quietly("auto")
    assert choice.precision == "bf16" and choice.probe_speedup is None and "AMX" in choice.reason

    fake_cpu(monkeypatch, EPYC_BF16)
    monkeypatch.setenv(precision.PROBE_ENV, "0")
    choice, _ = resolve_quietly("auto")
    assert choice.precision == "no" and choice.probe_speedup is None


def test_explicit_bf16_on_a_slow_cpu_warns_once_with_the_measured_cost(monkeypatch):
    fake_cpu(monkeypatch, EPYC_AVX2, speedup=1 / 9.7)
    choice, caught = resolve_quietly("bf16")
    assert choice.precision == "bf16" and choice.probe_speedup == pytest.approx(1 / 9.7)
    assert len(caught) == 1
    assert caught[0].startswith("train.mixed_precision=bf16 on a CPU without bf16 matrix units (AMD EPYC 7B12; "
                                "flags avx2)")
    assert "measured 9.7x slower than float32" in caught[0] and "'auto' or 'no'" in caught[0]
    with pytest.warns(RuntimeWarning, match="9.7x slower"):
        resolve_precision("bf16", "cpu")


def test_explicit_bf16_warns_where_the_probe_says_slower_despite_bf16_units(monkeypatch):
    fake_cpu(monkeypatch, EPYC_BF16, speedup=0.8)
    choice, caught = resolve_quietly("bf16")
    assert choice.precision == "bf16" and len(caught) == 1
    assert "1.2x slower" in caught[0] and "AMD EPYC 9B14" in caught[0]


def test_explicit_bf16_on_a_fast_cpu_is_quiet(monkeypatch):
    fake_cpu(monkeypatch, XEON_AMX, speedup=2.5)
    choice, caught = resolve_quietly("bf16")
    assert (choice.precision, choice.probe_speedup, caught) == ("bf16", 2.5, [])


def test_explicit_bf16_without_probe_still_warns_on_a_cpu_without_bf16_units(monkeypatch):
    fake_cpu(monkeypatch, EPYC_AVX2)
    monkeypatch.setenv(precision.PROBE_ENV, "0")
    choice, caught = resolve_quietly("bf16")
    assert choice.precision == "bf16" and len(caught) == 1 and "not measured" in caught[0]


def test_fp16_on_cpu_becomes_float32(monkeypatch):
    calls = fake_cpu(monkeypatch, XEON_AMX)
    choice, caught = resolve_quietly("fp16")
    assert (choice.precision, choice.requested, caught, calls) == ("no", "fp16", [], [])
    assert "fp16" in choice.reason


def test_unknown_request_is_refused():
    with pytest.raises(ValueError, match="'bogus'"):
        resolve_precision("bogus", "cpu")


# --- resolve_precision on CUDA (no GPU needed: torch.cuda is monkeypatched) ----------------------------------

@pytest.mark.parametrize("bf16_ok,expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda(monkeypatch, bf16_ok, expected):
    fake_cpu(monkeypatch, EPYC_AVX2)  # the probe must not run for a GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    choice, caught = resolve_quietly("auto", torch.device("cuda", 0))
    assert (choice.precision, choice.probe_speedup, caught) == (expected, None, [])


@pytest.mark.parametrize("requested", ["bf16", "fp16", "no"])
def test_explicit_precision_on_cuda_is_kept(monkeypatch, requested):
    fake_cpu(monkeypatch, EPYC_AVX2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    choice, caught = resolve_quietly(requested, "cuda")
    assert choice.precision == requested and caught == []


# --- the probe ------------------------------------------------------------------------------------------------

def test_probe_is_a_finite_positive_ratio_measured_once():
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    first = probe_bf16_speedup()
    assert isinstance(first, float) and math.isfinite(first) and first > 0
    assert torch.equal(torch.get_rng_state(), rng)  # training randomness does not depend on the probe
    assert torch.get_num_threads() == threads
    hits = probe_bf16_speedup.cache_info().hits
    assert probe_bf16_speedup() == first
    assert probe_bf16_speedup.cache_info().hits == hits + 1


# --- logging, make_accelerator, config ----------------------------------------------------------------------

def test_log_choice_logs_one_line_once(monkeypatch, caplog, capsys):
    monkeypatch.setattr(precision, "_logged", set())
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    choice = PrecisionChoice("no", "auto", "the CPU has no bf16 matrix units.", None, dict(EPYC_AVX2))
    with caplog.at_level("INFO", logger="diffalign"):
        log_choice(choice)
        log_choice(choice)
    lines = [r.getMessage() for r in caplog.records if r.name == "diffalign"]
    assert len(lines) == 1
    assert "'auto' -> 'no'" in lines[0] and "no bf16 matrix units" in lines[0] and "AMD EPYC 7B12" in lines[0]
    assert capsys.readouterr().err.count("mixed precision:") == 1


@pytest.mark.skipif(has_accelerator_device(), reason="checks the CPU choice")
def test_make_accelerator_auto_on_this_cpu_carries_the_choice():
    acc = make_accelerator("auto")
    choice = acc.diffalign_precision
    assert isinstance(choice, PrecisionChoice) and choice.requested == "auto"
    assert choice.precision in ("no", "bf16") and acc.mixed_precision == choice.precision
    assert choice.precision == "no" or choice.probe_speedup >= precision.MIN_SPEEDUP
    acc = make_accelerator("fp16")  # fp16 autocast does not exist on the CPU
    assert acc.mixed_precision == "no" and acc.diffalign_precision.requested == "fp16"


def test_config_default_is_auto_and_bad_values_name_the_key(tiny_config):
    assert OptimConfig().mixed_precision == "auto"
    assert load_config(data=tiny_config).train.mixed_precision == "auto"
    for value in ("auto", "'no'", "fp16", "bf16"):  # a bare no is YAML's false
        assert load_config(data=tiny_config, overrides=[f"train.mixed_precision={value}"]).train.mixed_precision \
            == value.strip("'")
    with pytest.raises(ConfigError, match=r"'train.mixed_precision' must be 'auto', 'no', 'fp16' or 'bf16', "
                                          r"got 'bogus'"):
        load_config(data=tiny_config, overrides=["train.mixed_precision=bogus"])


@pytest.mark.parametrize("override", ["train.mixed_precision=no", "train.mixed_precision='no'"])
def test_a_bare_yaml_no_means_float32(tiny_config, override):
    assert load_config(data=tiny_config, overrides=[override]).train.mixed_precision == "no"
