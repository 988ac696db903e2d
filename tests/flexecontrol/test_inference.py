"""FlexEControl inference (lightning_modules/flexecontrol/inference.py): a module rebuilt from its checkpoint, the
export of each variant in diffusers' format and the module rebuilt from it, and the errors of files that are neither."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import diffusers
import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from callbacks.model_target import ModelTarget
from lightning_modules.diffusion.tiny import write_tiny_text_to_image
from lightning_modules.flexecontrol import inference
from lightning_modules.flexecontrol.branch import FlexEControlBranch
from lightning_modules.flexecontrol.module import FlexEControlModule
from lightning_modules.flexecontrol.uni_controlnet import UniControlNetAdapter

SIZE = 16
TYPES = {"canny": 1, "seg": 3}
VARIANT_TYPES = {"flexecontrol": TYPES, "uni_controlnet": TYPES, "controlnet": {"canny": 1}}
SAMPLING = {"resolution": SIZE, "steps": 3, "guidance": 2.0, "scheduler": "DDIMScheduler"}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return write_tiny_text_to_image(tmp_path_factory.mktemp("tiny-sd") / "base", image_size=SIZE, seed=0)


def trained_module(base: Path, variant: str = "flexecontrol", seed: int = 0) -> FlexEControlModule:
    """A module whose learned weights are random (as if trained): its control changes the samples."""
    torch.manual_seed(seed)
    module = FlexEControlModule(base={"pretrained": str(base), "vae": None}, variant=variant,
                                condition_channels=dict(VARIANT_TYPES[variant]), kronecker_rank=2)
    with torch.no_grad():
        for parameter in module.trainable_parameters():
            parameter.normal_(std=0.05)
    return module.eval()


def lightning_checkpoint(module: FlexEControlModule, path: Path, **extra) -> Path:
    """The dict Lightning writes (the keys inference reads, as Trainer.save_checkpoint names them)."""
    torch.save({"epoch": 0, "global_step": 2, "pytorch-lightning_version": L.__version__,
                "state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "model_target": inference.MODULE_TARGET, **extra}, path)
    return path


def conditions(types: dict[str, int], seed: int = 0, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    maps = {name: (torch.rand(batch, 2, c, SIZE, SIZE, generator=g) > 0.7).float() for name, c in types.items()}
    present = {name: torch.tensor([[True, name == "canny"]] * batch) for name in types}
    return maps, present


def sample(module: FlexEControlModule, types: dict[str, int], seed: int = 0, **kwargs) -> torch.Tensor:
    maps, present = conditions(types) if types else ({}, {})
    return module.generate(["a red circle"], maps, present, generator=torch.Generator().manual_seed(seed),
                           **{**SAMPLING, **kwargs})


def fitted_batches(n: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(n * 2):
        sample_ = {"pixel_values": torch.rand(3, SIZE, SIZE, generator=g) * 2 - 1, "caption": "a red circle"}
        for name, c in TYPES.items():
            sample_[f"cond.{name}"] = (torch.rand(2, c, SIZE, SIZE, generator=g) > 0.7).float()
            sample_[f"present.{name}"] = torch.tensor([True, False])
        samples.append(sample_)
    return samples


def test_a_fitted_checkpoint_names_its_class_and_comes_back_with_its_learned_weights(base, tmp_path):
    torch.manual_seed(0)
    module = FlexEControlModule(base={"pretrained": str(base), "vae": None}, condition_channels=TYPES,
                                kronecker_rank=2, lr=1e-2)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[ModelTarget()])
    trainer.fit(module, DataLoader(fitted_batches(), batch_size=2))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["model_target"] == "lightning_modules.flexecontrol.module.FlexEControlModule"

    loaded = inference.load_for_inference(tmp_path / "last.ckpt")
    assert isinstance(loaded, FlexEControlModule) and not loaded.training and not loaded.control.training
    trained = module.state_dict()
    assert loaded.state_dict().keys() == trained.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.items())
    assert not all(torch.equal(v, FlexEControlModule(**dict(module.hparams)).state_dict()[k])
                   for k, v in trained.items())  # training changed something, and that came back
    module.eval()
    assert torch.equal(sample(loaded, TYPES), sample(module, TYPES))


def test_a_base_that_moved_is_given_as_a_mapping_or_a_directory(base, tmp_path):
    moved = tmp_path / "moved-base"
    shutil.copytree(base, moved)
    module = trained_module(moved)
    path = lightning_checkpoint(module, tmp_path / "m.ckpt")
    expected = sample(module, TYPES)
    shutil.rmtree(moved)
    with pytest.raises(ValueError, match=r"base.*pretrained.*moved-base.*where it lies") as error:
        inference.load_for_inference(path)
    assert "\n" not in str(error.value)
    assert "unexpected keyword argument 'unett'" in one_line_error(
        inference.load_for_inference, path, base={"pretrained": str(base), "unett": {}})
    for given in ({"pretrained": str(base), "vae": None}, str(base)):  # a directory keeps vae: null
        loaded = inference.load_for_inference(path, base=given)
        assert loaded.vae is None and torch.equal(sample(loaded, TYPES), expected)


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as error:
        call(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_files_that_are_not_such_checkpoints_are_one_line_errors(base, tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    assert "not a readable checkpoint" in one_line_error(inference.load_for_inference, junk)
    assert "no such file" in one_line_error(inference.load_for_inference, tmp_path / "absent.ckpt")
    assert "a directory" in one_line_error(inference.load_for_inference, tmp_path)
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    assert "no hyper_parameters" in one_line_error(inference.load_for_inference, tmp_path / "bare.ckpt")
    torch.save([1, 2], tmp_path / "list.ckpt")
    assert "not a Lightning checkpoint" in one_line_error(inference.load_for_inference, tmp_path / "list.ckpt")

    module = trained_module(base)
    other = lightning_checkpoint(module, tmp_path / "other.ckpt",
                                 model_target="lightning_modules.cpl.module.CPLModule")
    assert "a checkpoint of lightning_modules.cpl.module.CPLModule" in one_line_error(inference.load_for_inference,
                                                                                    other)
    state = module.state_dict()
    lacking = tmp_path / "lacking.ckpt"
    torch.save({"state_dict": dict(list(state.items())[1:]), "hyper_parameters": dict(module.hparams)}, lacking)
    assert f"lacks {next(iter(state))}" in one_line_error(inference.load_for_inference, lacking)
    extra = tmp_path / "extra.ckpt"
    torch.save({"state_dict": {**state, "control.stray": torch.zeros(1)}, "hyper_parameters": dict(module.hparams)},
               extra)
    assert "lacks: control.stray" in one_line_error(inference.load_for_inference, extra)
    other_variant = tmp_path / "variant.ckpt"  # uni_controlnet hyper-parameters, flexecontrol weights
    torch.save({"state_dict": state, "hyper_parameters": {**dict(module.hparams), "variant": "uni_controlnet"}},
               other_variant)
    assert "do not fit a uni_controlnet FlexEControlModule" in one_line_error(inference.load_for_inference, other_variant)


@pytest.mark.parametrize("variant", ["flexecontrol", "uni_controlnet", "controlnet"])
def test_each_variant_exports_in_diffusers_format_and_samples_as_its_checkpoint(base, tmp_path, variant):
    types = VARIANT_TYPES[variant]
    path = lightning_checkpoint(trained_module(base, variant), tmp_path / "m.ckpt")
    from_checkpoint = inference.load_for_inference(path)
    out = inference.export_checkpoint(path, tmp_path / "export")
    assert out == tmp_path / "export"
    assert sorted(p.name for p in out.iterdir()) == ["control", "worldbridge_export.json"]
    assert sorted(p.name for p in (out / "control").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    metadata = json.loads((out / "worldbridge_export.json").read_text())
    assert metadata["variant"] == variant and metadata["condition_channels"] == types
    assert metadata["base"] == {"pretrained": str(base), "vae": None}
    assert metadata["model_target"] == inference.MODULE_TARGET
    assert metadata["scheduler"]["class"] == "DDPMScheduler"
    assert metadata["scheduler"]["config"]["num_train_timesteps"] == 1000
    assert metadata["resolution"] is None  # not known from a checkpoint without datamodule hyper-parameters
    assert not list(tmp_path.glob(".export.tmp-*"))

    from_export = inference.load_export(out)
    assert not from_export.training
    expected = sample(from_checkpoint, types)
    assert torch.allclose(sample(from_export, types), expected, atol=1e-5)
    assert not torch.allclose(sample(from_export, {}), expected, atol=1e-3)  # the control matters
    strengths = {name: 0.5 for name in types}
    assert torch.allclose(sample(from_export, types, strengths=strengths),
                          sample(from_checkpoint, types, strengths=strengths), atol=1e-5)


def test_the_flexecontrol_export_is_the_merged_branch_and_leaves_the_module_intact(base, tmp_path):
    module = trained_module(base)
    before = sample(module, TYPES)
    inference.export(module, tmp_path / "export", resolution=SIZE)
    inference.export(module, tmp_path / "again")  # the module's own branch still carries its updates, whole
    assert module.control.adapted_layer_names() and torch.equal(sample(module, TYPES), before)
    assert json.loads((tmp_path / "export" / "worldbridge_export.json").read_text())["resolution"] == SIZE
    branch = FlexEControlBranch.from_pretrained(tmp_path / "export" / "control")
    assert branch.config.merged and branch.kronecker_factors is None
    assert not any("kronecker" in name for name, _ in branch.named_parameters())
    loaded = inference.load_export(tmp_path / "export")
    assert isinstance(loaded.control, FlexEControlBranch) and loaded.control.config.merged


def test_the_uni_controlnet_export_is_the_adapter(base, tmp_path):
    module = trained_module(base, "uni_controlnet")
    inference.export(module, tmp_path / "export")
    adapter = UniControlNetAdapter.from_pretrained(tmp_path / "export" / "control")
    saved = module.control.state_dict()
    assert adapter.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in adapter.state_dict().items())


def test_the_controlnet_export_loads_with_diffusers_alone(base, tmp_path):
    module = trained_module(base, "controlnet")
    inference.export(module, tmp_path / "export")
    config = json.loads((tmp_path / "export" / "control" / "config.json").read_text())
    assert config["_class_name"] == "ControlNetModel"
    controlnet = diffusers.ControlNetModel.from_pretrained(tmp_path / "export" / "control")
    saved = module.control.controlnet.state_dict()
    assert controlnet.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in controlnet.state_dict().items())


def test_an_export_goes_nowhere_but_an_empty_or_new_directory_and_a_failed_one_leaves_nothing(base, tmp_path,
                                                                                             monkeypatch):
    module = trained_module(base)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert "exists and is not an empty directory" in one_line_error(inference.export, module, taken)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert "exists and is not an empty directory" in one_line_error(inference.export, module, a_file)

    empty = tmp_path / "empty"
    empty.mkdir()
    inference.export(module, empty)
    assert (empty / "worldbridge_export.json").is_file()

    def broken_save(self, directory, **kwargs):
        Path(directory).mkdir(parents=True)
        (Path(directory) / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(FlexEControlBranch, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        inference.export(module, tmp_path / "failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "empty", "taken"]


def test_hyper_parameters_json_cannot_hold_are_refused_before_writing(base, tmp_path):
    module = trained_module(base)
    message = one_line_error(inference.export, module, tmp_path / "out",
                             base_source={"pretrained": str(base), "unet": object()})
    assert "base.unet" in message and not (tmp_path / "out").exists()
    inference.export(module, tmp_path / "dtype", base_source={"pretrained": str(base), "dtype": torch.float32})
    assert json.loads((tmp_path / "dtype" / "worldbridge_export.json").read_text())["base"]["dtype"] == "float32"


def test_an_export_whose_base_moved_loads_with_the_base_given(base, tmp_path):
    moved = tmp_path / "moved-base"
    shutil.copytree(base, moved)
    module = trained_module(moved)
    inference.export(module, tmp_path / "export")
    expected = sample(module, TYPES)
    shutil.rmtree(moved)
    assert "moved-base" in one_line_error(inference.load_export, tmp_path / "export")
    assert torch.allclose(sample(inference.load_export(tmp_path / "export", base=str(base)), TYPES), expected,
                          atol=1e-5)


def test_directories_that_are_not_usable_exports_are_one_line_errors(base, tmp_path):
    assert "no such directory" in one_line_error(inference.load_export, tmp_path / "absent")
    assert "has no worldbridge_export.json" in one_line_error(inference.load_export, tmp_path)
    inference.export(trained_module(base), tmp_path / "export")
    metadata_path = tmp_path / "export" / "worldbridge_export.json"
    metadata = json.loads(metadata_path.read_text())
    metadata_path.write_text("{not json")
    assert "unreadable" in one_line_error(inference.load_export, tmp_path / "export")
    metadata_path.write_text(json.dumps({**metadata, "variant": "t2i_adapter", "format": 7}))
    message = one_line_error(inference.load_export, tmp_path / "export")
    assert "variant 't2i_adapter'" in message and "format 7" in message
    metadata_path.write_text(json.dumps({**metadata, "condition_channels": {"canny": 1, "depth": 1}}))
    assert "was built for conditions" in one_line_error(inference.load_export, tmp_path / "export")
    metadata_path.write_text(json.dumps(metadata))
    (tmp_path / "export" / "control" / "diffusion_pytorch_model.safetensors").write_bytes(b"truncated")
    assert "cannot load control/ as FlexEControlBranch" in one_line_error(inference.load_export, tmp_path / "export")


def test_a_checkpoint_fitted_on_control_shards_exports_its_resolution(base, tmp_path):
    from datamodules.writers.common import ShardOptions
    from lightning_modules.flexecontrol.data import ControlData
    from lightning_modules.flexecontrol.shards import write_synthetic_control_shards

    write_synthetic_control_shards(tmp_path / "shards", num=4, size=SIZE, options=ShardOptions(seed=0))
    data = ControlData(train=str(tmp_path / "shards"), condition_channels=TYPES, resolution=SIZE, batch_size=2,
                       num_workers=0, verify="size")
    module = FlexEControlModule(base={"pretrained": str(base), "vae": None}, condition_channels=TYPES,
                                kronecker_rank=2)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    out = inference.export_checkpoint(tmp_path / "last.ckpt", tmp_path / "export")
    assert json.loads((out / "worldbridge_export.json").read_text())["resolution"] == SIZE
