"""Lets ms-swift's Qwen2-VL image path run without torchvision, in benchmarks/vs_swift.py's ms-swift processes only.

There is no CPU torchvision wheel on the benchmark machine. Two things need it although images
never do:
- qwen-vl-utils (which ms-swift's Qwen2-VL template calls to load and resize images) imports
  torchvision at the top of `vision_process`. That module gets a stand-in torchvision while it is
  imported, removed right after, so transformers (which checks `find_spec("torchvision")`) still
  sees torchvision as absent and keeps its PIL image processor.
- transformers' `AutoProcessor` for Qwen2-VL builds a video processor, which requires torchvision;
  with this hook the processor is built with `video_processor=None` (and saved with an empty one).
Video input fails loudly; the benchmark uses images only. vs_swift.py puts this folder on
PYTHONPATH of the ms-swift commands and nowhere else.
"""

import enum
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types


def _unavailable(*args, **kwargs):
    raise RuntimeError("torchvision is not installed (benchmark stand-in): video input is not supported")


def _stand_in() -> dict[str, types.ModuleType]:
    torchvision = types.ModuleType("torchvision")
    torchvision.__version__ = "0.0.0"
    io = types.ModuleType("torchvision.io")
    io.read_video = _unavailable
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.resize = _unavailable
    transforms.functional = functional
    transforms.InterpolationMode = enum.Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC")
    torchvision.io, torchvision.transforms = io, transforms
    return {
        "torchvision": torchvision,
        "torchvision.io": io,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    }


def _import_vision_process(loader, module) -> None:
    stand_in = _stand_in()
    sys.modules.update(stand_in)
    try:
        loader.exec_module(module)
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)


class _NoVideoProcessor:
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return None


def _import_processing_utils(loader, module) -> None:
    loader.exec_module(module)
    mapping = type(module.MODALITY_TO_AUTOPROCESSOR_MAPPING)
    getitem = mapping.__getitem__
    mapping.__getitem__ = lambda self, key: (
        _NoVideoProcessor if key == "video_processor" else getitem(self, key)
    )
    check = module.ProcessorMixin.check_argument_for_proper_class

    def check_argument(self, name, arg):
        if not (name == "video_processor" and arg is None):
            return check(self, name, arg)

    module.ProcessorMixin.check_argument_for_proper_class = check_argument
    save = module.ProcessorMixin.save_pretrained

    # Checkpoints save the processor: write `"video_processor": {}` for the missing one.
    def save_pretrained(self, *args, **kwargs):
        if "video_processor" in self.__dict__ and self.video_processor is None:
            self.video_processor = _SavedAsEmpty()
            try:
                return save(self, *args, **kwargs)
            finally:
                self.video_processor = None
        return save(self, *args, **kwargs)

    module.ProcessorMixin.save_pretrained = save_pretrained


class _SavedAsEmpty(dict):
    _auto_class = None


_HOOKS = {
    "qwen_vl_utils.vision_process": _import_vision_process,
    "transformers.processing_utils": _import_processing_utils,
}


class _Loader(importlib.abc.Loader):
    def __init__(self, loader, hook):
        self.loader, self.hook = loader, hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.hook(self.loader, module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _HOOKS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader, _HOOKS[name])
        return spec


if importlib.util.find_spec("torchvision") is None:
    sys.meta_path.insert(0, _Finder())
