"""The official npm `openai` client, run with node against a real server."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap

import pytest

from tests.api.conftest import MODEL

SCRIPT = textwrap.dedent("""
    const OpenAI = require("openai");
    const client = new OpenAI({ baseURL: process.argv[2], apiKey: "unused", maxRetries: 0 });
    (async () => {
      const full = await client.chat.completions.create({
        model: process.argv[3], messages: [{ role: "user", content: "Hello" }],
        max_tokens: 12, temperature: 0 });
      const stream = await client.chat.completions.create({
        model: process.argv[3], messages: [{ role: "user", content: "Hello" }],
        max_tokens: 12, temperature: 0, stream: true,
        stream_options: { include_usage: true } });
      let text = ""; let usage = null;
      for await (const chunk of stream) {
        if (chunk.choices.length) text += chunk.choices[0].delta.content || "";
        if (chunk.usage) usage = chunk.usage;
      }
      let notFound = null;
      try { await client.models.retrieve("nope"); } catch (e) { notFound = e.status; }
      console.log(JSON.stringify({ full: full.choices[0].message.content, text, usage,
                                   fullUsage: full.usage, notFound }));
    })().catch((e) => { console.error(e); process.exit(1); });
""")


@pytest.fixture(scope="module")
def node_openai(tmp_path_factory):
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm are not installed")
    folder = tmp_path_factory.mktemp("npm-openai")
    install = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "openai@^4"],
                             cwd=folder, capture_output=True, text=True, timeout=300)
    if install.returncode != 0:
        pytest.skip(f"npm could not install openai: {install.stderr.strip()[-300:]}")
    (folder / "client.js").write_text(SCRIPT)
    return folder


def test_npm_openai_client_streams_and_gets_errors(server, node_openai):
    run = subprocess.run(["node", "client.js", f"{server.url}/v1", MODEL], cwd=node_openai,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["text"] == result["full"]
    assert result["usage"] == result["fullUsage"]
    assert result["notFound"] == 404
