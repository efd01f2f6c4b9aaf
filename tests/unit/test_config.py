import tomllib

import pytest

from lbfl_mpi.config import Config, ConfigError, dump_toml, load_config, reference


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
