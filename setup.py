from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConfigs(build_py):
    """Ship the repository's top-level ``configs/`` inside the package as ``medloc_lightning/configs`` (one copy
    in the repository), so an installed lab finds its methods (`medloc_lightning.lab.methods.configs_folder`)."""

    def run(self) -> None:
        super().run()
        for source in sorted(Path("configs").rglob("*.yaml")):
            target = Path(self.build_lib) / "medloc_lightning" / source
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target))


setup(cmdclass={"build_py": BuildWithConfigs})
