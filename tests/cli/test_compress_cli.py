"""kiln quantize / prune / qat / experiment from the command line."""

import json

from tests.cli.test_cli import _assert_one_line_error, kiln


def test_quantize_json_reports_accuracy_and_size():
    result = kiln("quantize", "jsc-three-linear", "--weight-bits", "8", "--activation-bits", "8",
                  "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert abs(report["drop_points"]) < 2.0
    assert report["quantized_bytes"] < report["float_bytes"] / 2  # tiny layers: scales, biases


def test_quantize_config_errors_and_warnings(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[default.weight]\nbits = 0\n")
    _assert_one_line_error(kiln("quantize", "convnet", "--config", str(bad)), "default.weight")
    wide = tmp_path / "wide.yaml"
    wide.write_text("default:\n  weight: {bits: 33}\n")
    _assert_one_line_error(kiln("quantize", "convnet", "--config", str(wide)), "2..16")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[default.weight]\nformat = "posit"\n')
    _assert_one_line_error(kiln("quantize", "convnet", "--config", str(unknown)), "format")
    unmatched = tmp_path / "unmatched.toml"
    unmatched.write_text('[default.weight]\nbits = 8\n[[rules]]\nmatch = {regex = "nope.*"}\n'
                         'weight = {bits = 4}\n')
    result = kiln("quantize", "jsc-three-linear", "--config", str(unmatched))
    assert result.returncode == 0 and "match no layer" in result.stderr and "nope" in result.stderr


def test_quantize_range_flags(tmp_path):
    # --activation-range / --weight-range name the calibration; the table shows them.
    result = kiln("quantize", "jsc-three-linear", "--weight-bits", "4", "--activation-bits",
                  "4", "--activation-range", "percentile", "--weight-range", "mse", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["layers"]
    assert all("percentile" in row[3] for row in rows) and all("mse" in row[2] for row in rows)
    default = json.loads(kiln("quantize", "jsc-three-linear", "--weight-bits", "4",
                              "--activation-bits", "4", "--json").stdout)["layers"]
    assert all("mse" in row[3] and "mse" in row[2] for row in default)  # both by width
    default8 = json.loads(kiln("quantize", "jsc-three-linear", "--weight-bits", "8",
                               "--activation-bits", "8", "--json").stdout)["layers"]
    assert all("minmax" in row[3] and "minmax" in row[2] for row in default8)
    _assert_one_line_error(kiln("quantize", "jsc-three-linear", "--weight-bits", "4",
                                "--activation-range", "kl"), "--activation-range 'kl'")
    config = tmp_path / "w8.toml"
    config.write_text("[default.weight]\nbits = 8\n")
    _assert_one_line_error(kiln("quantize", "jsc-three-linear", "--config", str(config),
                                "--weight-range", "mse"), "names its ranges itself")
    equalized = json.loads(kiln("quantize", "jsc-three-linear", "--weight-bits", "4",
                                "--equalize", "--no-bias-correction", "--json").stdout)
    assert equalized["equalize"] and not equalized["bias_correction"]
    assert json.loads(kiln("quantize", "jsc-three-linear", "--weight-bits", "4", "--json"
                           ).stdout)["bias_correction"]
    _assert_one_line_error(kiln("quantize", "jsc-three-linear", "--weight-bits", "4",
                                "--adaround", "--bias-correction"), "use one of them")
    learned = json.loads(kiln("quantize", "jsc-three-linear", "--weight-bits", "4",
                              "--adaround", "--json").stdout)
    assert learned["adaround"] and not learned["bias_correction"]


def test_prune_rejects_bad_fraction_and_prunes():
    _assert_one_line_error(kiln("prune", "convnet", "--fraction", "1.5"), "fraction")
    result = kiln("prune", "jsc-three-linear", "--method", "filters", "--fraction", "0.25",
                  "--finetune-epochs", "1", "--json")
    report = json.loads(result.stdout)
    assert report["params_after"] < report["params_before"]


def test_quick_experiments_write_reports(tmp_path):
    for kind in ("quantization", "pruning"):
        result = kiln("experiment", kind, "--model", "jsc-three-linear", "--quick", "--out",
                      str(tmp_path), "--json")
        assert result.returncode == 0, result.stderr
        assert (tmp_path / f"{kind}.md").read_text().startswith("# ")
        assert json.loads((tmp_path / f"{kind}.json").read_text())["model"] == "jsc-three-linear"
    assert (tmp_path / "weight_only.png").stat().st_size > 10_000
    assert (tmp_path / "size_vs_accuracy.png").stat().st_size > 10_000
