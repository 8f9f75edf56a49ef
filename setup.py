"""s3prl-vgs: visually grounded speech upstreams for S3PRL and an ESPnet2 task."""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

ROOT = Path(__file__).parent

# The stack below is known to work together (torchaudio <= 2.8 for s3prl 0.4.18,
# huggingface_hub < 1 for transformers 4.57). Change them together, not one by one.
INSTALL_REQUIRES = [
    "torch==2.8.0",
    "torchaudio==2.8.0",
    "torchvision==0.23.0",
    "transformers>=4.57,<5",
    "huggingface_hub<1",
    "s3prl==0.4.18",
    "espnet==202511",
    "tensorboardX",
    "faiss-cpu",
    "h5py",
    "soundfile",
    "safetensors",
    "pyyaml",
    "scipy",
    "pillow",
    "tqdm",
    "pandas",  # s3prl's downstream datasets (fluent_commands) need it
    # ZeroSpeech 2021 ABX (vgs-zerospeech). sdist only: pip builds its Cython DTW (needs gcc + Python headers).
    "zerospeech-libriabx2==0.9.8",
    "matplotlib>=3.7,<4",  # ESPnet's use_matplotlib loss plots and s3prl_vgs.plots
    "tensorboard>=2.14,<3",  # ESPnet's use_tensorboard (torch.utils.tensorboard)
]

EXTRAS = {
    "test": ["pytest>=8", "pytest-timeout", "hypothesis>=6.100,<7", "ruff==0.17.5"],
}

CONSOLE_SCRIPTS = [
    "vgs-synth=s3prl_vgs.data.synthetic:main",
    "vgs-prepare=s3prl_vgs.data.prepare:main",
    "vgs-validate=s3prl_vgs.data.validate:main",
    "vgs-extract-roi=s3prl_vgs.features.extract:main",
    "vgs-import-tsv=s3prl_vgs.features.tsv:main",
    "vgs-convert=s3prl_vgs.convert:main",
    "vgs-evaluate=s3prl_vgs.evaluate:main",
    "vgs-zerospeech=s3prl_vgs.zerospeech.cli:main",
    "vgs-zerospeech-compare=s3prl_vgs.zerospeech.report:main",
    "vgs-synth-zr2021=s3prl_vgs.zerospeech.synthetic:main",
    "vgs-search=s3prl_vgs.search:main",
    "vgs-plots=s3prl_vgs.plots:main",
    "vgs-pretrain-conv=s3prl_vgs.pretrain_conv:main",
    "vgs-pretrain-roi=s3prl_vgs.pretrain_roi:main",
    "vgs-export=espnet_recipes.bin.vgs_export:main",
    "s3prl-vgs-downstream=s3prl_vgs.upstream.run_downstream:main",
]


def recipe_data():
    """Shell scripts and YAML of the recipe template, shipped inside espnet_recipes."""
    base = ROOT / "espnet_recipes"
    files = [p.relative_to(base).as_posix() for p in base.rglob("*") if p.suffix in {".sh", ".yaml", ".yml"}]
    return {"espnet_recipes": files, "s3prl_vgs.upstream": ["configs/*.yaml"],
            "s3prl_vgs": ["assets/*.safetensors"]}


# The start-up hook (see s3prl_vgs_startup.py): one .pth line in site-packages, written
# for wheels (build_py puts it at the wheel root) and for `pip install -e .` (develop).
# The line is a no-op when the module is gone, so a leftover .pth never breaks Python.
STARTUP_PTH = "s3prl_vgs_startup.pth"
STARTUP_LINE = ('import sys; exec("try:\\n import s3prl_vgs_startup as _h\\nexcept ImportError:\\n _h = None\\n'
                'if _h is not None:\\n _h.startup()")\n')


class BuildPyWithStartup(build_py):
    def run(self):
        super().run()
        Path(self.build_lib, STARTUP_PTH).write_text(STARTUP_LINE)

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib, STARTUP_PTH))]


class DevelopWithStartup(develop):
    def run(self):
        super().run()
        if not self.uninstall:
            Path(self.install_dir, STARTUP_PTH).write_text(STARTUP_LINE)


setup(
    name="s3prl-vgs",
    version="0.1.0",
    description="Visually grounded speech models (FaST-VGS, speech-guided MIM) as S3PRL upstreams and ESPnet2 recipes",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["s3prl_vgs", "s3prl_vgs.*", "espnet_recipes", "espnet_recipes.*"]),
    py_modules=["s3prl_vgs_startup"],
    cmdclass={"build_py": BuildPyWithStartup, "develop": DevelopWithStartup},
    package_data=recipe_data(),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
