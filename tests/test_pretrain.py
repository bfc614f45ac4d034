import torch
from safetensors.torch import load_file

from hero.models import load_pipeline
from hero.pretrain import PretrainConfig, pretrain
from hero.sampling import sample_images


def small(out, steps):
    return PretrainConfig(out=str(out), steps=steps, batch_size=4, warmup=1, save_every=2, sample_grid=False, threads=1)


def weights(folder):
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_pretrain_is_reproducible_and_resumes_exactly(tmp_path):
    straight = pretrain(small(tmp_path / "a", 4))
    pretrain(small(tmp_path / "b", 2))
    resumed = pretrain(small(tmp_path / "b", 4))  # picks up last.pt at step 2
    wa, wb = weights(straight), weights(resumed)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    first = weights(tmp_path / "a" / "checkpoint-2")
    assert not all(torch.equal(first[k], wa[k]) for k in wa)  # training moved the weights


def test_pretrained_folder_loads_and_samples(tmp_path):
    folder = pretrain(small(tmp_path, 1))
    pipe = load_pipeline(folder)
    images = sample_images(pipe, "two red squares", 2, steps=2)
    assert images.shape == (2, 32, 32, 3)
