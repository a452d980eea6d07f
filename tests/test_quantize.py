"""int8 post-training quantisation on digits-cnn: close to the float model, saved and read back exactly without
unpickling, its bytes known before calibration (what a size budget is fitted on), and offered only where it fits."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch

from search.baselines import baseline_points
from search.config import ConfigError, parse_config
from search.measure import compressed_size_bytes, count_flops, layer_flops, model_size_bytes
from search.model_files import load_pruned, save_pruned
from search.quantize import Int8Model, int8_structure, quantize_int8
from search.reference import measure_against_dense, measure_dense
from search.training import evaluate
from search.workloads import Workload
from spaces import SearchSpace


@pytest.fixture(scope="module")
def int8(digits: Workload) -> Int8Model:
    return quantize_int8(digits.model, digits.example_inputs, digits.train)


def test_int8_stays_within_a_point_and_takes_under_a_third_of_the_bytes(int8: Int8Model, digits: Workload) -> None:
    assert abs(evaluate(int8, digits.val) - evaluate(digits.model, digits.val)) <= 0.01
    assert model_size_bytes(int8.quantized) < model_size_bytes(digits.model) / 3 + 8_000  # scales, graph code


def test_an_int8_model_is_measured_with_its_packed_size_and_layers(int8: Int8Model, digits: Workload) -> None:
    """Its quantised graph's state holds dtypes beside tensors: packing passes them through (a trial crashed here)."""
    dense = measure_dense(digits, device="cpu", threads=1, batch_size=1)
    measured = measure_against_dense(int8, digits, dense, device="cpu", threads=1, batch_size=1)
    assert measured.compressed_bytes == compressed_size_bytes(int8.quantized)
    assert measured.compressed_ratio < 0.5 and len(measured.layers) == 4


def test_the_uncalibrated_structure_has_the_int8_models_bytes(int8: Int8Model, digits: Workload) -> None:
    assert model_size_bytes(int8_structure(digits.model, digits.example_inputs)) == model_size_bytes(int8.quantized)


def test_an_int8_model_reads_back_exactly_from_its_weights_and_int8_files(int8: Int8Model, digits: Workload,
                                                                         tmp_path: Path) -> None:
    save_pruned(int8, tmp_path / "trials/00000/model.pt", digits.input_shape)
    assert (tmp_path / "trials/00000/model.int8.pt").is_file()
    again = load_pruned(tmp_path, "trials/00000/model.pt", digits.model)
    inputs = next(iter(digits.val))[0]
    with torch.no_grad():
        assert isinstance(again, Int8Model) and torch.equal(again(inputs), int8(inputs))
    save_pruned(digits.model, tmp_path / "trials/00000/model.pt")  # a float model in its place drops the int8 file
    assert not (tmp_path / "trials/00000/model.int8.pt").exists()


def test_quantisation_is_a_choice_of_the_space_but_never_of_a_baseline_or_a_dynamic_point(digits: Workload) -> None:
    model, x = digits.model, digits.example_inputs
    space = replace(SearchSpace.build(model, x, layer_flops(model, x), count_flops(model, x), ("channel", "dynamic"),
                                      0.5, 0.01), quantize=True)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    points = [space.suggest(study.ask()) for _ in range(20)]
    static = [p for p in points if p["method"] == "channel"]
    assert {p["quantize"] for p in static} == {"none", "int8"}
    assert not any("quantize" in p for p in points if p["method"] == "dynamic")
    assert space.policy(static[0], 0.3).quantize == static[0]["quantize"]
    assert all(point["quantize"] == "none" for point in baseline_points(space).values())


@pytest.mark.parametrize("argv, named", [(["--quantize", "--device", "cuda"], "--quantize"),
                                         (["--cost", "size", "--methods", "dynamic"], "--cost size")])
def test_quantisation_where_it_cannot_run_is_refused(argv: list[str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_config(argv)


def test_an_int8_points_float_model_is_fitted_to_its_target_over_the_int8_factor(digits: Workload) -> None:
    """With --cost size an int8 model takes about 0.3 of its float model's bytes: a point aiming at 0.2 of the dense
    bytes prunes its float model to about 0.67, not to 0.2 (which removed blocks and channels it had no need to)."""
    model, x = digits.model, digits.example_inputs
    space = replace(SearchSpace.build(model, x, layer_flops(model, x), count_flops(model, x), ("channel",), 0.25,
                                      0.01), quantize=True, int8_factor=0.3)
    point = {"method": "channel", "target": 0.2, "quantize": "int8"}
    assert space.backbone_target(point, 0.2) == pytest.approx(0.2 / 0.3)
    assert space.backbone_target({**point, "quantize": "none"}, 0.2) == 0.2
    assert space.backbone_target(point, 0.5) == 1.0  # never asked to grow past dense
