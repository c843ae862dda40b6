"""Installs ``genft_tune-torchao-compat.pth`` next to the package (wheel and editable
installs alike): one line that imports ``genft_tune`` (when it is importable), run at interpreter start-up, so that
genft_tune's torchao compatibility hook is in place before torchtune's first import in
every process, ``tune run`` included (see ``genft_tune/_torchao_compat.py``). Everything
else about the package is in ``pyproject.toml``."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "genft_tune-torchao-compat.pth"
# A .pth line that starts with "import" is executed; genft_tune's __init__ is light. Guarded,
# so that a moved or half-removed install costs nothing instead of an error at every start.
PTH_LINE = 'import importlib.util as _u; _u.find_spec("genft_tune") and __import__("genft_tune")\n'


class BuildPyWithPth(build_py):
    """Wheels: the .pth goes to the root of the wheel, i.e. into site-packages."""

    def run(self):
        super().run()
        Path(self.build_lib, PTH_NAME).write_text(PTH_LINE)

    def get_outputs(self, *args, **kwargs):
        return [*super().get_outputs(*args, **kwargs), str(Path(self.build_lib, PTH_NAME))]


class _StrategyWithPth:
    """Wraps setuptools' editable strategy: writes its files, then our .pth."""

    def __init__(self, strategy):
        self.strategy = strategy

    def __enter__(self):
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc):
        return self.strategy.__exit__(*exc)

    def __call__(self, wheel, files, mapping):
        self.strategy(wheel, files, mapping)
        wheel.writestr(PTH_NAME, PTH_LINE)


class EditableWheelWithPth(editable_wheel):
    """``pip install -e``: the editable wheel gets the same .pth (it sorts after
    setuptools' ``__editable__`` one, which makes ``genft_tune`` importable)."""

    def _select_strategy(self, *args, **kwargs):
        return _StrategyWithPth(super()._select_strategy(*args, **kwargs))


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
