"""Chunking: heading paths, atomic code blocks and tables, size cap with overlap, typing, slugs."""
from indexer.blocks import parse
from indexer.chunking import Slugger, approx_tokens, chunk_page, slugify, split_sections
from indexer.pages import parse_page


def page(body: str, rel: str = "it/x.md"):
    return parse_page(rel, body.encode("utf-8"))[0]


def test_headings_give_heading_paths_and_anchors():
    p = page("---\ntitle: VPN 指南\n---\n# VPN 指南\n\nintro\n\n## 申请 VPN\n\nstep one\n\n### 审批\n\nmanager\n\n## Linux\n\nopenconnect\n")
    chunks = chunk_page(p)
    assert [c.heading for c in chunks] == ["VPN 指南", "VPN 指南 › 申请 VPN", "VPN 指南 › 申请 VPN › 审批", "VPN 指南 › Linux"]
    assert [c.anchor for c in chunks] == ["vpn-指南", "申请-vpn", "审批", "linux"]
    assert chunks[1].id == "it/x#申请-vpn" and chunks[1].page == "it/x" and chunks[1].title == "VPN 指南"
    # the embedded text starts with the heading path; the title is not repeated when H1 equals it
    assert chunks[1].embed_text == "VPN 指南 › 申请 VPN\n\nstep one"


def test_title_prefixed_when_h1_differs_and_text_before_first_heading():
    p = page("---\ntitle: Printers\n---\nSome intro.\n\n## Add one\n\nbody\n")
    first, second = chunk_page(p)
    assert first.heading == "" and first.anchor == "" and first.embed_text == "Printers\n\nSome intro."
    assert second.embed_text.startswith("Printers › Add one\n\n")


def test_hash_comment_inside_code_fence_is_not_a_heading():
    p = page("# Tools\n\n## Setup\n\n```bash\n# install it\napt install x\n## not a heading either\n```\n\nafter\n")
    chunks = chunk_page(p)
    assert [c.heading for c in chunks] == ["Tools › Setup"]
    assert "# install it" in chunks[0].text and "after" in chunks[0].text


def test_indented_fence_in_list_item_and_tilde_fence():
    blocks = parse("1. step\n\n   ```\n   # x\n   ```\n\n~~~\n# y\n~~~\n")
    assert [b.kind for b in blocks] == ["item", "code", "code"]


def test_table_is_never_split_even_over_the_cap():
    rows = "\n".join(f"| host{i} | 上海 | 说明说明说明 |" for i in range(60))
    p = page(f"# Net\n\n## 网关\n\nbefore\n\n| a | b | c |\n|---|---|---|\n{rows}\n\nafter\n")
    chunks = chunk_page(p, max_tokens=60, overlap=10)
    tables = [c for c in chunks if "| host0 |" in c.text]
    assert len(tables) == 1 and "| host59 |" in tables[0].text  # whole table in one chunk
    assert all("| host30 |" not in c.text for c in chunks if c is not tables[0])


def test_cjk_text_is_counted_and_split_at_sentence_ends():
    text = "。".join(f"第{i}句话说明公司的请假制度和审批流程" for i in range(40)) + "。"
    assert approx_tokens("请假流程") == 4 and approx_tokens("hello world") == 3
    chunks = chunk_page(page(f"# 请假\n\n{text}\n"), max_tokens=80, overlap=20)
    assert len(chunks) > 3
    assert all(approx_tokens(c.embed_text) <= 80 for c in chunks)
    assert all(c.text.endswith("。") for c in chunks)  # cut at sentence ends only


def test_size_cap_and_overlap_between_pieces():
    items = "\n".join(f"- item {i} explains one more step of the long procedure in detail" for i in range(40))
    chunks = chunk_page(page(f"# Guide\n\n## Steps\n\n{items}\n"), max_tokens=100, overlap=30)
    assert len(chunks) >= 4
    assert [c.id for c in chunks[:3]] == ["it/x#steps", "it/x#steps~2", "it/x#steps~3"]
    for a, b in zip(chunks, chunks[1:]):
        assert approx_tokens(a.embed_text) <= 100
        shared = set(a.text.splitlines()) & set(b.text.splitlines())
        assert shared, "consecutive pieces share their boundary lines"
        assert 0 < sum(approx_tokens(s) for s in shared) <= 30
    # every item is in some chunk, split only at item boundaries
    for i in range(40):
        assert any(f"- item {i} explains" in c.text for c in chunks)


def test_big_code_block_stays_whole():
    code = "```python\n" + "\n".join(f"x{i} = {i}  # line" for i in range(200)) + "\n```"
    chunks = chunk_page(page(f"# Code\n\nintro\n\n{code}\n\noutro\n"), max_tokens=100, overlap=20)
    assert sum(1 for c in chunks if "x0 = 0" in c.text) == 1
    assert any("x0 = 0" in c.text and "x199 = 199" in c.text for c in chunks)


def test_front_matter_sets_title_tags_type():
    p = page("---\ntitle: Wi-Fi drops\ntags: [it, wifi]\ntype: troubleshooting\nowner: IT\n---\n# ignored H1\n\nbody\n")
    assert (p.title, p.tags, p.type, p.meta["owner"]) == ("Wi-Fi drops", ("it", "wifi"), "troubleshooting", "IT")
    assert "---" not in p.text
    (c,) = chunk_page(p)
    assert c.type == "troubleshooting" and c.tags == ("it", "wifi")


def test_title_falls_back_to_h1_then_file_name():
    assert page("intro\n\n# 报销流程\n\ntext").title == "报销流程"
    assert page("no heading here", "hr/sick-leave.md").title == "sick-leave"


def test_troubleshooting_type_from_heading_path():
    p = page("# Wi-Fi\n\n## Setup\n\na\n\n## 常见问题\n\nb\n\n## FAQ\n\nc\n\n## Symptoms\n\nd\n\n## How to fix it\n\ne\n\n## Prefix lists\n\nf\n")
    types = {c.heading.split(" › ")[-1]: c.type for c in chunk_page(p)}
    assert types == {"Setup": "doc", "常见问题": "troubleshooting", "FAQ": "troubleshooting",
                     "Symptoms": "troubleshooting", "How to fix it": "troubleshooting", "Prefix lists": "doc"}


def test_slugify_rules():
    assert slugify("VPN 已连接但无法访问内网") == "vpn-已连接但无法访问内网"
    assert slugify("连接步骤（Windows / macOS）") == "连接步骤windows--macos"
    assert slugify("Step 2: **Check** the `AUTH-403` error!") == "step-2-check-the-auth-403-error"
    assert slugify("See [the guide](x.md)") == "see-the-guide"


def test_slug_dedupe_like_github():
    s = Slugger()
    assert [s.slug(h) for h in ["FAQ", "FAQ", "faq", "FAQ-1"]] == ["faq", "faq-1", "faq-2", "faq-1-1"]
    secs = split_sections("# A\n\n## FAQ\n\nx\n\n## Other\n\n### FAQ\n\ny\n")
    assert [s.anchor for s in secs] == ["faq", "faq-1"]


def test_chunk_hash_changes_with_text_only():
    a = chunk_page(page("# T\n\n## S\n\nbody one\n"))[0]
    b = chunk_page(page("# T\n\n## S\n\nbody one\n"))[0]
    c = chunk_page(page("# T\n\n## S\n\nbody two\n"))[0]
    assert a.hash == b.hash != c.hash
