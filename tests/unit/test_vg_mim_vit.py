"""The MIM family's image side: ViT wrapper, pretrained loading, image transforms, VG-HuBERT keys."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from s3prl_vgs.modules.image_transforms import IMAGENET_MEAN, IMAGENET_STD, build_image_transform, eval_resize_size
from s3prl_vgs.models.vg_mim import ViTImageEncoder, ViTImageEncoderConfig

from tests.shared_paths import REFERENCE

SMALL = dict(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, layer_norm_eps=1e-6)
HF_SMALL = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, layer_norm_eps=1e-6)


def test_visible_patch_path_equals_encoding_the_subset():
    torch.manual_seed(0)
    enc = ViTImageEncoder(ViTImageEncoderConfig(**SMALL)).eval()
    images = torch.randn(2, 3, 32, 32)
    full = enc(images)
    assert full.last_hidden_state.shape == (2, 17, 32) and full.patches.shape == (2, 16, 32)
    x = enc.embed_patches(images)
    keep = torch.tensor([3, 0, 9, 12])
    part = enc.encode_tokens(x[:, keep])
    assert part.last_hidden_state.shape == (2, 5, 32)
    assert not torch.allclose(part.cls, full.cls)  # the CLS saw only the 4 kept patches
    # position embeddings are added before selection, so token order does not matter: a shuffled full
    # set gives the same CLS and the same (shuffled) patch outputs
    perm = torch.randperm(16)
    shuffled = enc.encode_tokens(x[:, perm])
    torch.testing.assert_close(shuffled.cls, full.cls, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shuffled.patches, full.patches[:, perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(enc.encode_tokens(x).last_hidden_state, full.last_hidden_state)
    with pytest.raises(ValueError, match="images must be"):
        enc(torch.randn(2, 3, 64, 64))


def test_loads_mae_weights_and_computes_what_hf_computes(tmp_path):
    from transformers import ViTMAEConfig, ViTMAEModel

    torch.manual_seed(0)
    hf = ViTMAEModel(ViTMAEConfig(**HF_SMALL, mask_ratio=0.0)).eval()
    hf.save_pretrained(tmp_path / "mae")
    ours = ViTImageEncoder(ViTImageEncoderConfig(**SMALL, pretrained=str(tmp_path / "mae"))).eval()
    images = torch.randn(2, 3, 32, 32)
    # mask_ratio 0 and increasing noise: HF keeps every patch in order
    ref = hf(images, noise=torch.arange(16.0).expand(2, 16)).last_hidden_state
    torch.testing.assert_close(ours(images).last_hidden_state, ref, rtol=1e-5, atol=1e-5)
    # the MAE sin-cos table became a learnable parameter of ours
    assert ours.embeddings.position_embeddings.requires_grad
    torch.testing.assert_close(ours.embeddings.position_embeddings, hf.embeddings.position_embeddings)


def test_loads_vit_weights_and_rejects_wrong_sizes(tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    hf = ViTModel(ViTConfig(**HF_SMALL)).eval()  # has a pooler, which we drop
    hf.save_pretrained(tmp_path / "vit")
    ours = ViTImageEncoder(ViTImageEncoderConfig(**SMALL, pretrained=str(tmp_path / "vit"))).eval()
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(images).last_hidden_state, hf(images).last_hidden_state, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="hidden_size: checkpoint 32 vs config 64"):
        ViTImageEncoder(ViTImageEncoderConfig(**dict(SMALL, hidden_size=64), pretrained=str(tmp_path / "vit")))


def test_eval_transform_resizes_center_crops_and_normalises():
    assert eval_resize_size(224) == 256 and eval_resize_size(32) == 37
    # left half red, right half blue, 80 x 40 (W x H): the short side goes to 37, the crop keeps the middle
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, :40, 0] = 255
    arr[:, 40:, 2] = 255
    t = build_image_transform(False, 32)
    out = t(Image.fromarray(arr))
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out, t(Image.fromarray(arr)))  # deterministic
    red = torch.tensor([(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1], -IMAGENET_MEAN[2] / IMAGENET_STD[2]])
    torch.testing.assert_close(out[:, 16, 0], red, rtol=0, atol=1e-5)  # far left column of the crop is still red
    assert out[2, 16, 31] > 2.0  # far right is blue


def test_train_transform_crops_and_augments():
    torch.manual_seed(0)
    t = build_image_transform(True, 32)
    names = [type(s).__name__ for s in t.transforms]
    assert names == ["RandomResizedCrop", "RandAugment", "ToTensor", "Normalize"]
    img = Image.fromarray(np.random.RandomState(0).randint(0, 255, (50, 70, 3), dtype=np.uint8))
    a, b = t(img), t(img)
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)
    vgh = build_image_transform(True, 224, randaugment=False, hflip=True)
    assert [type(s).__name__ for s in vgh.transforms] == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]


def test_model_image_transform_follows_config():
    from s3prl_vgs.models import build_model

    torch.manual_seed(0)
    model = build_model("vg_mim", preset="tiny", train_randaugment=False, train_hflip=True)
    names = [type(s).__name__ for s in model.image_transform(train=True).transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert model.image_transform(train=False).transforms[1].size == (32, 32)


@pytest.mark.slow
def test_vg_hubert_preset_holds_every_official_tensor():
    """Every official VG-HuBERT image/projection tensor has a home of the right shape (DINO qkv split in 3)."""
    from s3prl_vgs.models import build_model

    shapes_file = REFERENCE / "official-checkpoints" / "vg_hubert_state_dict_shapes.json"
    if not shapes_file.is_file():
        pytest.skip("official key list not available")
    official = {k.removeprefix("dual_encoder."): v for k, v in json.loads(shapes_file.read_text())["dual_encoder"].items()}
    model = build_model("vg_mim", preset="vg_hubert")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    rename = {
        "trm.cls_token": "image_encoder.embeddings.cls_token",
        "trm.pos_embed": "image_encoder.embeddings.position_embeddings",
        "trm.patch_embed.proj.weight": "image_encoder.embeddings.patch_embeddings.projection.weight",
        "trm.patch_embed.proj.bias": "image_encoder.embeddings.patch_embeddings.projection.bias",
        "trm.norm.weight": "image_encoder.layernorm.weight",
        "trm.norm.bias": "image_encoder.layernorm.bias",
    }
    block = {
        "norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
    }
    checked = 0
    for key, shape in official.items():
        if key.startswith("trm.blocks."):
            _, _, i, rest = key.split(".", 3)
            module, param = rest.rsplit(".", 1)
            prefix = f"image_encoder.encoder.layer.{i}."
            if module == "attn.qkv":  # fused (3D, D) -> query, key, value
                for part in ("query", "key", "value"):
                    assert ours[f"{prefix}attention.attention.{part}.{param}"] == [shape[0] // 3] + shape[1:]
            else:
                assert ours[f"{prefix}{block[module]}.{param}"] == shape
        elif key.startswith("trm."):
            assert ours[rename[key]] == shape
        elif key.startswith(("audio_cls_token_proj.", "visual_cls_token_proj.")):
            side = "audio" if key.startswith("audio") else "image"
            assert ours[f"{side}_proj.{key.split('.', 1)[1]}"] == shape
        else:
            continue
        checked += 1
    assert checked == 6 + 12 * 12 + 8
    assert model.decoder is None and model.momentum_image_encoder is None
