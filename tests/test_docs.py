"""The user documents: README.md (short, for users), docs/**/*.md (the experiment record), the qground-nano model card
and the data cards (training/data/*.md). Lines stay within 120 characters, relative links resolve to files in the
repository, the README keeps its Spaces front matter and the two command blocks CI reads, and the model card keeps
its Hugging Face front matter."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CARD = ROOT / "assets" / "qground-nano" / "README.md"
DOCS = sorted([README, CARD, *(ROOT / "docs").rglob("*.md"), *(ROOT / "training" / "data").glob("*.md")])
MAX_LINE = 120
MAX_README_WORDS = 1350
# [text](target) and ![alt](target); the text may span lines. Targets with a scheme or only an anchor are not files.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def front_matter(text: str) -> tuple[dict, str]:
    """The YAML front matter (between the first two ``---`` lines) and the body after it."""
    if not text.startswith("---\n"):
        return {}, text
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end]), text[end + 5 :]


def without_code(text: str) -> str:
    """The text with fenced code blocks and inline code spans removed (links inside code are not links)."""
    text = re.sub(r"^```.*?^```[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(text: str) -> set[str]:
    """GitHub-style anchors of the headings in ``text``."""
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.*)$", without_code(text), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_the_documents_exist():
    assert README.exists() and CARD.exists()
    assert (ROOT / "docs" / "experiments" / "README.md").exists()
    assert not (ROOT / "docs" / "nano.md").exists()  # its content lives in the model card and docs/experiments


def test_readme_is_short():
    """Words in README.md after its front matter, code blocks and HTML comments included (as ``wc -w`` counts)."""
    _, body = front_matter(README.read_text(encoding="utf-8"))
    words = len(body.split())
    assert words <= MAX_README_WORDS, f"README.md has {words} words after the front matter (at most {MAX_README_WORDS})"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_lines_are_at_most_120_characters(path):
    """Every line, front matter, tables and code blocks included."""
    long = [
        f"{path.relative_to(ROOT)}:{n}: {len(line)} characters"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if len(line) > MAX_LINE
    ]
    assert not long, "\n".join(long)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    """Every relative link (outside code) names a file or folder of the repository; a ``#anchor`` on the same page
    names one of its headings."""
    text = path.read_text(encoding="utf-8")
    _, body = front_matter(text)
    targets = LINK.findall(without_code(body))
    bad = []
    for target in targets:
        if EXTERNAL.match(target):
            continue
        file, _, anchor = target.partition("#")
        if not file:
            if anchor not in anchors(body):
                bad.append(target)
            continue
        resolved = (path.parent / file).resolve()
        if not resolved.exists() or ROOT not in resolved.parents:
            bad.append(target)
    assert not bad, f"{path.relative_to(ROOT)}: links to missing files: {bad}"


def test_readme_links_the_screenshot_and_the_model_card():
    body = README.read_text(encoding="utf-8")
    assert "](docs/chat.png)" in body and (ROOT / "docs" / "chat.png").stat().st_size < 400_000
    assert "](assets/qground-nano/README.md)" in body and "](docs/experiments/README.md)" in body


def test_readme_keeps_the_spaces_front_matter_and_the_command_blocks():
    """CI (``.ci/run``) extracts the test command from between its markers; the Space reads the front matter."""
    text = README.read_text(encoding="utf-8")
    config, _ = front_matter(text)
    assert config["sdk"] == "gradio" and config["app_file"] == "app.py"
    for name, command in (
        ("app-command", "pip install -r requirements.txt && python app.py"),
        ("test-command", "pip install -r requirements-dev.txt && python -m pytest -q"),
    ):
        block = re.search(rf"<!-- {name} -->\n```bash\n(.*?)\n```\n<!-- /{name} -->", text, flags=re.S)
        assert block, f"README.md lacks the <!-- {name} --> block"
        assert block.group(1).startswith("python3 -m venv .venv && . .venv/bin/activate && ")
        assert block.group(1).endswith(command) and "\n" not in block.group(1)


def test_model_card_front_matter():
    config, body = front_matter(CARD.read_text(encoding="utf-8"))
    assert config["license"] == "apache-2.0" and config["library_name"] == "qground"
    assert config["tags"] and body.lstrip().startswith("# qground-nano")


def test_experiment_index_lists_every_entry():
    """docs/experiments/README.md links each dated entry once, and every entry is dated in its name."""
    folder = ROOT / "docs" / "experiments"
    index = (folder / "README.md").read_text(encoding="utf-8")
    entries = sorted(p.name for p in folder.glob("*.md") if p.name != "README.md")
    assert entries
    for name in entries:
        assert re.match(r"\d{4}-\d{2}-\d{2}-[a-z0-9-]+\.md$", name), name
        assert index.count(f"]({name})") == 1, f"docs/experiments/README.md should link {name} once"
