"""A Markdown knowledge base as passages: one per heading, long sections split at paragraphs.

A passage keeps where it came from: its file (relative to the knowledge-base folder), the file's title
(its ``#`` heading, else its name) and the ``##``/``###`` headings above its text, so an answer can cite
``pleural_effusion.md > Causes``. ``README.md`` files describe a folder and are not indexed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: a section longer than this is split at blank lines: MiniLM reads 256 word pieces (about 1,000
#: characters of English) and silently drops the rest
MAX_PASSAGE_CHARACTERS = 1000
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class KnowledgeBaseError(ValueError):
    """The knowledge-base folder is missing or holds no passage; the message names the folder."""


@dataclass(frozen=True)
class Passage:
    """One retrievable piece of text and where it sits in the knowledge base."""

    source: str  # file path relative to the knowledge-base folder, with forward slashes
    title: str
    sections: tuple[str, ...]
    text: str

    @property
    def heading(self) -> str:
        """``File title > Section > Subsection``."""
        return " > ".join((self.title, *self.sections))

    @property
    def location(self) -> str:
        """``file.md > Section > Subsection``: what a citation points a reader to."""
        return " > ".join((self.source, *self.sections))

    @property
    def indexed_text(self) -> str:
        """What is embedded or keyword-indexed: the headings give a short passage its topic."""
        return f"{self.heading}: {self.text}"


def markdown_files(folder: Path) -> list[Path]:
    """The ``.md`` files under ``folder`` in a fixed order, without READMEs and hidden folders."""
    return sorted(
        path
        for path in folder.rglob("*.md")
        if path.is_file()
        and path.name.lower() != "readme.md"
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def signature(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """``(file, mtime_ns, size)`` of every indexed file: a cache key that changes when a file does."""
    entries = []
    for path in markdown_files(folder):
        stat = path.stat()
        entries.append((path.relative_to(folder).as_posix(), stat.st_mtime_ns, stat.st_size))
    return tuple(entries)


def readiness(folder: Path) -> tuple[bool, str]:
    """Whether ``folder`` can be searched, and why not; cheap (lists files, reads none)."""
    if not folder.is_dir():
        return False, f"the knowledge base folder {folder} does not exist (set models.knowledge_base)"
    if not markdown_files(folder):
        return False, f"the knowledge base folder {folder} holds no Markdown (.md) files besides a README"
    return True, f"knowledge base {folder}"


def read_passages(folder: Path) -> list[Passage]:
    """Every passage of every Markdown file under ``folder``; ``KnowledgeBaseError`` when there is none."""
    ready, reason = readiness(folder)
    if not ready:
        raise KnowledgeBaseError(reason)
    passages: list[Passage] = []
    for path in markdown_files(folder):
        try:
            markdown = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KnowledgeBaseError(f"cannot read knowledge base file {path}: {exc}") from exc
        passages += split_markdown(markdown, path.relative_to(folder).as_posix(), title_from_name(path))
    if not passages:
        raise KnowledgeBaseError(f"the Markdown files in {folder} hold no text to search")
    return passages


def title_from_name(path: Path) -> str:
    """A title for a file without a ``#`` heading: ``kidney_stones.md`` -> ``Kidney stones``."""
    return path.stem.replace("_", " ").replace("-", " ").strip().capitalize() or path.name


def split_markdown(markdown: str, source: str, default_title: str) -> list[Passage]:
    """The passages of one file: the text under each heading, cut to ``MAX_PASSAGE_CHARACTERS`` pieces.

    The first ``#`` heading is the file's title; deeper headings form the section path. Headings inside
    fenced code blocks are text.
    """
    title = default_title
    title_seen = False
    path: list[tuple[int, str]] = []
    blocks: list[tuple[tuple[str, ...], list[str]]] = [((), [])]
    in_fence = False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match is None:
            blocks[-1][1].append(line)
            continue
        level, text = len(match.group(1)), match.group(2).strip()
        if level == 1 and not title_seen:
            title, title_seen = text, True
            continue
        path = [(lvl, name) for lvl, name in path if lvl < level] + [(level, text)]
        blocks.append((tuple(name for _, name in path), []))
    passages = []
    for sections, lines in blocks:
        for piece in split_long("\n".join(lines), MAX_PASSAGE_CHARACTERS):
            passages.append(Passage(source=source, title=title, sections=sections, text=piece))
    return passages


def split_long(text: str, limit: int) -> list[str]:
    """``text`` as pieces of at most about ``limit`` characters: whole paragraphs joined while they fit,
    a paragraph longer than ``limit`` split between sentences. Lines of a paragraph are joined by spaces.
    """
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n[ \t]*\n", text)]
    units: list[str] = []
    for paragraph in filter(None, paragraphs):
        units += [paragraph] if len(paragraph) <= limit else _sentences_within(paragraph, limit)
    pieces: list[str] = []
    for unit in units:
        if pieces and len(pieces[-1]) + 2 + len(unit) <= limit:
            pieces[-1] += "\n\n" + unit
        else:
            pieces.append(unit)
    return pieces


def _sentences_within(paragraph: str, limit: int) -> list[str]:
    """A long paragraph as runs of whole sentences of at most ``limit`` characters (a longer sentence
    stays whole)."""
    runs: list[str] = []
    for sentence in _SENTENCE_END.split(paragraph):
        if runs and len(runs[-1]) + 1 + len(sentence) <= limit:
            runs[-1] += " " + sentence
        else:
            runs.append(sentence)
    return runs
