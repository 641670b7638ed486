import subprocess
import sys

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'tensorflow', 'keras', 'horovod'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import importlib, pkgutil
import hvdtrain.core
for module in pkgutil.iter_modules(hvdtrain.core.__path__):
    importlib.import_module('hvdtrain.core.' + module.name)
import hvdtrain, hvdtrain.callbacks, hvdtrain.datasets, hvdtrain.script_args
print('ok')
"""


def test_every_core_module_and_the_callbacks_import_without_torch_tensorflow_or_horovod():
    out = subprocess.run([sys.executable, "-c", BLOCK], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
