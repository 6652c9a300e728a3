"""The in-process harness finds a modality module's handler by its base class's name, not by a hook."""
import importlib
import types

import pytest

from tests.support.harness import handler_class, handler_module


def module_with(source: str, name: str = "some_classifier_handler") -> types.ModuleType:
    module = types.ModuleType(name)
    base = types.ModuleType("moved_base")
    exec("class BaseHandler: pass\nclass BatchClassifierHandler(BaseHandler): pass\n"
         "class ImportedHandler(BatchClassifierHandler): pass\n", base.__dict__)
    module.__dict__.update(BatchClassifierHandler=base.BatchClassifierHandler, ImportedHandler=base.ImportedHandler)
    exec(source, module.__dict__)
    return module


def test_the_one_subclass_the_module_defines_is_its_handler():
    module = module_with("class Settings: pass\nclass Middle(BatchClassifierHandler): pass\n"
                         "class SpeechHandler(Middle): pass\n")
    with pytest.raises(LookupError, match="defines 2 BatchClassifierHandler subclasses \\(Middle, SpeechHandler\\)"):
        handler_class(module)
    only = module_with("class Settings: pass\nclass SpeechHandler(BatchClassifierHandler): pass\n")
    assert handler_class(only).__name__ == "SpeechHandler", "imported subclasses and the base itself are not it"


def test_a_module_without_one_is_named():
    with pytest.raises(LookupError, match="some_classifier_handler defines 0 .*none"):
        handler_class(module_with("class Settings: pass\n"))


@pytest.mark.parametrize("modality", ["image", "text", "audio"])
def test_each_modalitys_handler_is_found(modality):
    found = handler_class(importlib.import_module(handler_module(modality)))
    assert any(base.__name__ == "BatchClassifierHandler" for base in found.__mro__)
