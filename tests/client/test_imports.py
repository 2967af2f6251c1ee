"""What importing the client pulls in: no torch, no transformers (``koserve[client]`` has neither)."""

from __future__ import annotations

import subprocess
import sys



def test_client_imports_without_torch_or_transformers():
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers'):
            raise ImportError(f'blocked: {name}')
        return None
sys.meta_path.insert(0, Block())
import koserve.client, koserve.client.aio, koserve.client.sync, koserve.client._grpc, koserve.client._http
import koserve.client.transport, koserve.client.stream_state
import koserve.text, koserve.chat, koserve.cli.chat, koserve.gateway
from koserve.client import ChatClient
ChatClient('127.0.0.1:9', 'akallama-70b', tokenizer=None)
bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]
assert not bad, bad
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
