import dataclasses
import math
import tomllib

import numpy as np
import pytest
import torch

from lbfl_mpi.cli import main as cli_main
from lbfl_mpi.config import SEED_MAX, Config, ConfigError, dump_toml, load_config, reference, sections, validate


def test_defaults_are_valid_and_round_trip_through_toml(tmp_path):
    cfg = load_config(None)
    assert cfg.data.name == "digits" and cfg.sync.mode == "bsp"
    assert tomllib.loads(cfg.to_toml()) == cfg.to_dict()


def test_toml_file_and_typed_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\nlr = 0.2\nsteps = 7\n[sync]\nmode = "fedavg"\nperiod = 4\n')
    cfg = load_config(f, ["train.lr=0.3", "data.synthetic_shape=[1, 4, 4]", "run.resume=true",
                          "model.name=mlp", "train.momentum=0"])
    assert cfg.train.lr == 0.3 and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 7 and cfg.sync.mode == "fedavg" and cfg.sync.period == 4
    assert cfg.data.synthetic_shape == [1, 4, 4] and cfg.run.resume is True and cfg.model.name == "mlp"
    assert cfg.train.momentum == 0.0 and isinstance(cfg.train.momentum, float)


@pytest.mark.parametrize("override,fragment", [
    ("sync.period=0", "sync.period=0"),
    ("train.lr=0", "train.lr"),
    ("train.lr=-1", "train.lr"),
    ("train.lr=fast", "train.lr: expected float"),
    ("train.steps=1.5", "train.steps: expected int"),
    ("run.resume=1", "run.resume: expected bool"),
    ("data.labels_per_client=11", "data.labels_per_client=11"),
    ("data.alpha=0", "data.alpha"),
    ("train.momentum=1.0", "train.momentum"),
    ("sync.mode=ring", "sync.mode='ring'"),
    ("model.name=resnet9000", "model.name"),
    ("data.name=mnist", "data.name"),
    ("nosuch.key=1", "unknown config section [nosuch]"),
    ("train.nosuch=1", "unknown config key train.nosuch"),
    ("train.lr", "expected section.key=value"),
    ("telemetry.flush_every=0", "telemetry.flush_every"),
    ("compress.density=0", "compress.density=0.0: must be in (0, 1]"),
    ("compress.density=-0.1", "compress.density"),
    ("compress.density=1.01", "compress.density=1.01"),
    ("compress.selection=random", "compress.selection='random'"),
    ("compress.scope=bucket", "compress.scope"),
    ("compress.method=powersgd", "compress.method"),
    ("compress.warmup_steps=-1", "compress.warmup_steps"),
])
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_labels_per_client_checked_against_synthetic_classes():
    load_config(None, ["data.name=synthetic", "data.synthetic_classes=20", "data.labels_per_client=15"])
    with pytest.raises(ConfigError, match="labels_per_client"):
        load_config(None, ["data.name=synthetic", "data.synthetic_classes=5", "data.labels_per_client=6"])


def test_resume_and_overwrite_are_exclusive():
    with pytest.raises(ConfigError, match="run.resume"):
        load_config(None, ["run.resume=true", "run.overwrite=true"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr=1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
    top = tmp_path / "top.toml"
    top.write_text("lr = 1\n")
    with pytest.raises(ConfigError, match="inside a \\[section\\]"):
        load_config(top)


def test_every_key_is_documented():
    rows = reference()
    assert len(rows) == sum(len(v) for v in Config().to_dict().values())
    assert all(help_.strip() for _, _, _, help_ in rows)


def test_dump_toml_escapes_strings():
    data = {"run": {"out_dir": 'a "quoted"\\path', "seed": 3, "resume": False}, "data": {"shape": [1, 2]}}
    assert tomllib.loads(dump_toml(data)) == data


# ------------------------------------------------------------------------ declared bounds, every key
def _fields(*types):
    """(key, field) of every config key whose shown type is in ``types``, from the dataclasses."""
    out = []
    for sec, cls in sections().items():
        for f in dataclasses.fields(cls):
            typ = f.metadata.get("type") or (f.type if isinstance(f.type, str) else f.type.__name__)
            if typ in types:
                out.append((f"{sec}.{f.name}", f))
    return out


NUMERIC = _fields("int", "float")
INTS = {key for key, f in NUMERIC if f.type == "int"}


def test_every_numeric_key_declares_bounds():
    assert len(NUMERIC) > 40
    assert all("min" in f.metadata for _, f in NUMERIC)
    # the upper bound of labels_per_client is the dataset's class count, checked across keys
    assert all("max" in f.metadata for key, f in NUMERIC if key in INTS and key != "data.labels_per_client")


@pytest.mark.parametrize("key", [key for key, _ in NUMERIC])
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_values_are_rejected_naming_the_key(key, bad):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={bad}"])
    msg = str(e.value)
    assert msg.startswith(key) and "\n" not in msg
    assert ("must be finite" if key not in INTS else "expected int") in msg


@pytest.mark.parametrize("key", [key for key, f in NUMERIC if f.type == "float"])
def test_non_finite_floats_are_rejected_by_validate_too(key):
    cfg = Config()
    sec, name = key.split(".")
    setattr(getattr(cfg, sec), name, math.nan)
    with pytest.raises(ConfigError, match=f"^{key}=nan: must be finite"):
        validate(cfg)


def _around(key: str, f, side: str):
    """(value just outside the bound, value that must be accepted) for the ``side`` ("min"/"max")."""
    bound, is_open = f.metadata[side], f.metadata.get(f"{side}_open", False)
    away = -1 if side == "min" else 1
    if key in INTS:
        assert not is_open, "int bounds are declared closed"
        return bound + away, bound
    inside = math.nextafter(float(bound), -away * math.inf)
    outside = math.nextafter(float(bound), away * math.inf)
    return (float(bound), inside) if is_open else (outside, float(bound))


BOUNDS = [(key, f, side) for key, f in NUMERIC for side in ("min", "max") if side in f.metadata]


def _context(key: str) -> list[str]:
    """The other keys a value needs to be valid at all: the federated layer's keys need fl.clients > 0,
    which needs FedAvg rounds; a varying top-k density needs top-k; sharpness needs the training probe;
    teacher v2's keys need its noise; model.width needs bncnn."""
    if key.startswith("fl."):
        return ["sync.mode='fedavg'", *([] if key == "fl.clients" else ["fl.clients=1000000"])]
    if key == "compress.density_batch_ref":
        return ["compress.method='topk'"]
    if key == "train.eval_sharpness_iters":
        return ["train.eval_train_samples=64"]
    if key == "model.width":
        return ["model.name='bncnn'"]
    if key == "scaling.noise_small_batch":
        return ["scaling.method='teacher'", "scaling.teacher_noise='fisher'", "scaling.small_batch=4"]
    return []


@pytest.mark.parametrize("key,f,side", BOUNDS, ids=[f"{k}-{s}" for k, _, s in BOUNDS])
def test_value_just_outside_each_bound_is_rejected_and_the_bound_accepted(key, f, side):
    outside, inside = _around(key, f, side)
    with pytest.raises(ConfigError) as e:
        load_config(None, [*_context(key), f"{key}={outside!r}"])
    assert str(e.value).startswith(f"{key}=") and "must be" in str(e.value) and "\n" not in str(e.value)
    cfg = load_config(None, [*_context(key), f"{key}={inside!r}"])
    sec, name = key.split(".")
    assert getattr(getattr(cfg, sec), name) == inside


@pytest.mark.parametrize("override,fragment", [
    ("run.seed=9223372036854775808", "run.seed=9223372036854775808: must be <= 2147483647"),
    ("run.seed=-1", "run.seed=-1: must be >= 0"),
    ("sync.wait_poll_us=1e7", "sync.wait_poll_us=10000000.0: must be in [0, 1000000]"),
    ("dist.timeout_s=86401", "dist.timeout_s=86401.0: must be in (0, 86400]"),
    ("train.lr=inf", "train.lr=inf: must be finite and > 0"),
    ("train.weight_decay=inf", "train.weight_decay=inf: must be finite and >= 0"),
    ("scaling.factor=inf", "scaling.factor=inf: must be finite"),
    ("data.synthetic_noise=inf", "data.synthetic_noise=inf: must be finite"),
    ("train.momentum=nan", "train.momentum=nan: must be finite and in [0, 1)"),
    ("train.lr=1" + "0" * 400, "train.lr=1000"),  # an int beyond the float range
    ("run.seed=1" + "0" * 5000, "run.seed: expected int"),  # beyond int()'s digit limit: a string
    ("hetero.slowdown=[1.0, inf]", "hetero.slowdown=[1.0, inf]: element inf: must be finite"),
    ("hetero.slowdown=[1.0, nan]", "element nan: must be finite"),
    ("hetero.slowdown=[0.5]", "hetero.slowdown=[0.5]: element 0.5: must be in [1, 1000]"),
    ("hetero.slowdown=[1001]", "element 1001: must be in [1, 1000]"),
    ("hetero.slowdown=[true]", "element True: expected float"),
    ("data.synthetic_shape=[3, 0, 32]", "data.synthetic_shape=[3, 0, 32]: element 0: must be >= 1"),
    ("data.synthetic_shape=[3, true, 32]", "element True: expected int"),
    ("data.synthetic_shape=[3, 32]", "data.synthetic_shape=[3, 32]: must be 3 positive integers"),
    ("batching.plan_probes=[]", "batching.plan_probes=[]: must be a non-empty list"),
    ("batching.plan_probes=[4, 0]", "batching.plan_probes=[4, 0]: element 0: must be >= 1"),
    ("batching.plan_probes=[1.5]", "element 1.5: expected int"),
    ("batching.min_batch=4;batching.max_batch=3",
     "batching.max_batch=3: must be 0 (no limit) or >= batching.min_batch"),
])
def test_out_of_range_values_give_one_line_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, override.split(";"))
    assert fragment in str(e.value)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_large_finite_lr_and_edge_values_are_accepted():
    cfg = load_config(None, ["train.lr=1e6", "run.seed=2147483647", "sync.wait_poll_us=1e6",
                             "hetero.slowdown=[1, 1000.0]", "train.momentum=0.999"])
    assert cfg.train.lr == 1e6 and cfg.run.seed == SEED_MAX and cfg.hetero.slowdown == [1, 1000.0]


def test_the_largest_seed_works_in_every_seeding_expression():
    """The seeds the package derives from run.seed (trainer, sync, teacher, loader, partition) for the
    largest accepted run.seed: torch and numpy take them."""
    s, rank, step = SEED_MAX, 4095, 2**31 - 1
    for derived in (s, s * 1_000_003 + rank + 1, s * 1_000_003 + rank + 7919, s * 7919 + 17,
                    s * 1_000_003 + step):
        torch.Generator().manual_seed(derived)
    np.random.default_rng([s, rank, 10**6]).permutation(4)
    with pytest.raises((RuntimeError, ValueError, OverflowError)):  # what run.seed = 2**63 would lead to
        torch.Generator().manual_seed(2**63 * 1_000_003)


def test_non_finite_in_a_toml_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[train]\nlr = 1e400\n")  # TOML reads an overflowing float as inf
    with pytest.raises(ConfigError, match=r"^train.lr=inf: must be finite"):
        load_config(f)
    f.write_text("[run]\nseed = " + "1" * 5000 + "\n")
    with pytest.raises(ConfigError, match="invalid TOML") as e:
        load_config(f)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00\x01[run]\n", bytes(range(256)), b"[run]\nname = \"\xe9\"\n"])
def test_binary_config_file_is_one_config_error_line(tmp_path, content):
    f = tmp_path / "c.toml"
    f.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(f"--config {str(f)!r}: ") and "\n" not in str(e.value)


def test_unreadable_config_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a regular file"):
        load_config(tmp_path)  # a directory


# ------------------------------------------------------------------------------- run.resume = auto
@pytest.mark.parametrize("text,want", [("true", True), ("false", False), ("auto", "auto"), ('"auto"', "auto")])
def test_resume_accepts_true_false_and_auto(text, want):
    cfg = load_config(None, [f"run.resume={text}"])
    assert cfg.run.resume == want and type(cfg.run.resume) is type(want)
    assert tomllib.loads(cfg.to_toml()) == cfg.to_dict()


@pytest.mark.parametrize("body,want", [("resume = true", True), ('resume = "auto"', "auto")])
def test_resume_from_a_toml_file(tmp_path, body, want):
    f = tmp_path / "c.toml"
    f.write_text(f"[run]\n{body}\n")
    assert load_config(f).run.resume == want


@pytest.mark.parametrize("text,fragment", [
    ("maybe", "run.resume='maybe': must be one of false, true, auto"),
    ("Auto", "run.resume='Auto'"),
    ("1", 'run.resume: expected bool or "auto", got 1'),
    ("[]", "run.resume: expected bool"),
])
def test_resume_rejects_other_values(text, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"run.resume={text}"])
    assert fragment in str(e.value)


def test_resume_auto_and_overwrite_are_exclusive():
    with pytest.raises(ConfigError, match="run.resume='auto': cannot be combined with run.overwrite=true"):
        load_config(None, ["run.resume=auto", "run.overwrite=true"])
    assert load_config(None, ["run.resume=false", "run.overwrite=true"]).run.overwrite is True


def test_resume_int_set_directly_is_rejected_by_validate():
    cfg = Config()
    cfg.run.resume = 1  # equal to True, but not a bool
    with pytest.raises(ConfigError, match="run.resume"):
        validate(cfg)


# ------------------------------------------------------------------------- preemption, non-finite
def test_preempt_defaults():
    cfg = load_config(None)
    assert cfg.run.preempt_signals == ["SIGUSR1", "SIGTERM"] and cfg.run.preempt_check_every == 0
    assert cfg.train.nonfinite == "stop"
    assert load_config(None, ["run.preempt_signals=[]"]).run.preempt_signals == []
    assert load_config(None, ['run.preempt_signals=["SIGINT", "SIGUSR2"]']).run.preempt_signals == \
        ["SIGINT", "SIGUSR2"]


@pytest.mark.parametrize("value,fragment", [
    ('["SIGKILL"]', "SIGKILL cannot be caught"),
    ('["SIGTERM", "SIGSTOP"]', "SIGSTOP cannot be caught"),
    ('["SIGFOO"]', "'SIGFOO' is not a signal name"),
    ('["USR1"]', "'USR1' is not a signal name"),
    ('["SIG_DFL"]', "'SIG_DFL' is not a signal name"),
    ("[15]", "element 15: expected str"),
    ('"SIGTERM"', "run.preempt_signals: expected list"),
    ('["SIGTERM", "SIGTERM"]', "must not repeat a signal"),
])
def test_preempt_signals_rejects_bad_names(value, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"run.preempt_signals={value}"])
    assert str(e.value).startswith("run.preempt_signals") and fragment in str(e.value)


@pytest.mark.parametrize("override,ok", [
    ("run.preempt_check_every=1000000", True), ("run.preempt_check_every=1000001", False),
    ("run.preempt_check_every=-1", False), ("train.nonfinite=skip", True), ("train.nonfinite=ignore", True),
    ("train.nonfinite=zap", False),
])
def test_preempt_check_every_and_nonfinite(override, ok):
    if ok:
        load_config(None, [override])
    else:
        with pytest.raises(ConfigError, match="^" + override.split("=")[0]):
            load_config(None, [override])


# ----------------------------------------------------------------------------- shown in the docs
def test_lbfl_config_shows_every_bound(capsys):
    assert cli_main(["config"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "Range: > 0, finite." in lines["train.lr"]
    assert "Range: [0, 1)." in lines["train.momentum"]
    assert "Range: [0, 2147483647]." in lines["run.seed"]
    assert "Range: [0, 1000000]." in lines["sync.wait_poll_us"]
    assert "Range: (0, 86400]." in lines["dist.timeout_s"]
    assert "Range: each element in [1, 1000]." in lines["hetero.slowdown"]
    assert " bool|auto " in lines["run.resume"] and "One of: false, true, auto." in lines["run.resume"]
    assert "One of: stop, skip, ignore." in lines["train.nonfinite"]
    assert all("Range: " in lines[key] for key, _ in NUMERIC)


def test_lbfl_config_prints_defaults_that_set_takes_back(capsys):
    """Every default ``lbfl config`` prints is a TOML value: given back to ``--set`` it loads and equals the
    default (reference: ``reference()``'s Python value), e.g. ``false``, not Python's ``False``."""
    from lbfl_mpi.config.fields import toml_value

    assert cli_main(["config"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["run.overwrite"].split()[2] == "false"
    assert '["SIGUSR1", "SIGTERM"]' in lines["run.preempt_signals"]
    for key, _typ, default, _help in reference():
        text = toml_value(default)
        assert lines[key].split(None, 2)[2].startswith(text + " "), (key, lines[key])
        section, name = key.split(".")
        assert getattr(getattr(load_config(None, [f"{key}={text}"]), section), name) == default, key


def test_lbfl_config_toml_is_a_complete_template_that_loads_back(capsys, tmp_path):
    """``lbfl config --toml``: every key of ``reference()`` once, under its section, with its help as a
    comment; as a config file it loads to exactly the defaults (reference: ``Config()``)."""
    assert cli_main(["config", "--toml"]) == 0
    text = capsys.readouterr().out
    data = tomllib.loads(text)
    assert sorted(f"{s}.{k}" for s, t in data.items() for k in t) == sorted(k for k, *_ in reference())
    path = tmp_path / "all.toml"
    path.write_text(text)
    assert load_config(path).to_dict() == Config().to_dict()
    assert "# (float) Learning rate. Range: > 0, finite.\nlr = 0.05\n" in text


def test_readme_table_shows_the_reference_help():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in readme.splitlines() if line.startswith("| `")}
    for key, typ, _, help_ in reference():
        assert help_.replace("|", "\\|") in rows[key], key
        assert f"| {typ.replace('|', chr(92) + '|')} |" in rows[key], key
