"""Leak test over the real kb/: queries aimed straight at each restricted page (titles, headings, key
sentences, its canary, hand-written ones in both languages) never surface it, its text or its fix
steps for a caller outside its audience, and do find it for one inside. Fast with the hash embedder,
slow with the real embedders."""
import pytest

from indexer.blocks import Block
from indexer.chunking import split_sections
from kbgate.access import anonymous, authenticated
from kbgate.errors import NotFound
from kbgate.retrieval import Hit

# each restricted page holds one unique string found nowhere else in kb/
CANARIES = {"hr/confidential/salary-bands": "HR-CONF-7Q4K",
            "hr/confidential/performance-improvement-plans": "ER-PIP-3X9M",
            "eng/break-glass": "bg-root-prod-5c7e",
            "security/incident-2025-03-ci-token-leak": "SEC-2025-014",
            "security/phishing-response": "SOC-PB-88D1"}
WRITTEN = {  # (Chinese, English) questions a curious outsider would ask about each page
    "hr/confidential/salary-bands": ["P5 高级工程师的薪资带宽是多少？", "今年调薪预算是多少，绩效 A 涨多少",
                                     "What is the salary band for a P5 senior engineer?",
                                     "annual raise budget by performance rating"],
    "hr/confidential/performance-improvement-plans": ["员工绩效不达标，怎么发起 PIP 绩效改进计划", "PIP 周期多长",
                                                      "how do I put someone on a performance improvement plan",
                                                      "how long does a PIP last"],
    "eng/break-glass": ["生产环境紧急权限怎么申请", "Vault 借出紧急账号需要谁审批",
                        "break-glass admin account for the production cluster",
                        "Argo CD is down and I need admin access to kubernetes"],
    "security/incident-2025-03-ci-token-leak": ["CI 令牌泄露事件是怎么回事", "构建日志泄露了部署令牌",
                                                "CI deploy token leaked in a public build log",
                                                "security incident with a leaked token in March"],
    "security/phishing-response": ["员工上报钓鱼邮件怎么处理", "怎么从所有邮箱清除钓鱼邮件",
                                   "how to purge a phishing email from all mailboxes",
                                   "someone clicked a phishing link and entered their password"],
}
OUTSIDER = authenticated("mallory", ["eng", "it", "people", "office"])  # none of the restricted groups


def derived_queries(page, bare_headings: bool = True) -> list[str]:
    """The page's title, its canary, each heading (bare, else after the title) and each section's first sentence."""
    out = [page.title, CANARIES[page.id]]
    for sec in split_sections(page.text):
        if len(sec.path) > 1:
            out.append(sec.path[-1] if bare_headings else f"{page.title} {sec.path[-1]}")
        prose = next((b.text for b in sec.blocks if isinstance(b, Block) and b.kind == "para"), "")
        first = prose.split("。")[0].split(". ")[0].strip()
        if len(first) > 8:
            out.append(first[:200])
    return list(dict.fromkeys(out))


def restricted(index) -> dict:
    return {pid: p for pid, p in index.pages.items() if p.audience}


def leaks(retriever, caller, queries, k=10) -> list[str]:
    """Every way a page the caller may not read shows through: a hit, its canary in any text, a fix section."""
    ix = retriever.index
    hidden = {pid for pid, p in restricted(ix).items() if not caller.may_read(p.audience)}
    canaries = [CANARIES[pid] for pid in hidden]
    found = []
    for trouble in (False, True):
        for q, hits in zip(queries, retriever.search_many(queries, k, prefer_troubleshooting=trouble, caller=caller)):
            if len(hits) != k:
                found.append(f"{q!r}: {len(hits)} hits, not {k}: a hidden page took a slot")
            for h in hits:
                try:
                    texts = (h.text, h.title, h.heading, retriever.section_text(h, caller))
                except NotFound:  # a hit whose section the caller may not read: counted below
                    texts = (h.text, h.title, h.heading)
                if h.page in hidden:
                    found.append(f"{q!r}: hit {h.page}")
                found += [f"{q!r}: {c} in {h.page}" for c in canaries for t in texts if c in t]
                fix = retriever.steps_section(h.page, caller)
                found += [f"{q!r}: {c} in the fix of {h.page}" for c in canaries if fix and c in fix.text]
    for pid in hidden:
        if retriever.steps_section(pid, caller) is not None:
            found.append(f"steps section of {pid}")
        chunk = next(c for c in ix.chunks if c.page == pid)
        forged = Hit(pid, f"{pid}.md", chunk.title, chunk.heading, chunk.anchor, "", "doc", 0, None, None, 0, 0, 0)
        for fetch in (lambda: retriever.section_text(forged, caller), lambda: ix.readable(pid, caller)):
            try:
                fetch()
                found.append(f"text of {pid}")
            except NotFound:
                pass
        if pid in {p.id for p in ix.page_list(caller)}:
            found.append(f"{pid} listed")
    return found


def all_queries(index) -> dict:
    return {pid: derived_queries(p) + WRITTEN[pid] for pid, p in restricted(index).items()}


def insider_misses(retriever, queries_by_page, k=10) -> dict:
    """{page: [queries whose top k lacks it]} for a caller holding the page's first group."""
    misses = {}
    for pid, queries in queries_by_page.items():
        insider = authenticated("insider", retriever.index.pages[pid].audience[:1])
        got = retriever.search_many(queries, k, caller=insider)
        misses[pid] = [q for q, hits in zip(queries, got) if pid not in {h.page for h in hits}]
    return misses


def test_the_kb_has_the_restricted_pages_the_leak_test_aims_at(hash_retriever):
    ix = hash_retriever.index
    assert set(restricted(ix)) == set(CANARIES) == set(WRITTEN)
    assert {pid: p.audience for pid, p in restricted(ix).items()} == {
        "hr/confidential/salary-bands": ("hr",), "hr/confidential/performance-improvement-plans": ("hr", "people-managers"),
        "eng/break-glass": ("oncall", "sre"), "security/incident-2025-03-ci-token-leak": ("security",),
        "security/phishing-response": ("security",)}
    for pid, canary in CANARIES.items():  # unique: a leak test on a string other pages hold would prove nothing
        assert [p.id for p in ix.pages.values() if canary in p.text] == [pid]


@pytest.mark.parametrize("caller", [OUTSIDER, anonymous("public-only"), authenticated("hana", ["hr"])],
                         ids=["wrong-groups", "anonymous", "hr-only"])
def test_no_leak_for_callers_outside_the_audience(hash_retriever, caller):
    queries = [q for qs in all_queries(hash_retriever.index).values() for q in qs]
    assert len(queries) >= 60
    assert leaks(hash_retriever, caller, queries) == []


def test_the_same_queries_find_the_pages_for_callers_inside(hash_retriever):
    # a bare "FAQ" or "Steps" heading or a code is not a question a reader asks: headings go after the title here
    queries = {pid: derived_queries(p, bare_headings=False)[:1] + derived_queries(p, bare_headings=False)[2:]
               for pid, p in restricted(hash_retriever.index).items()}
    assert insider_misses(hash_retriever, queries) == {pid: [] for pid in queries}
    fixes = {pid: hash_retriever.steps_section(pid, authenticated("i", p.audience[:1]))
             for pid, p in restricted(hash_retriever.index).items() if p.type == "troubleshooting"}
    assert all(fixes.values()) and len(fixes) == 3
    assert CANARIES["eng/break-glass"] in hash_retriever.section_text(fixes["eng/break-glass"])


@pytest.mark.slow
def test_no_leak_with_the_real_embedders(kb_index, minilm):
    from kbgate.config import load_config
    from kbgate.retrieval import Retriever

    cfg = load_config()
    retriever = Retriever(kb_index[1], minilm, cfg.retrieval)
    queries = [q for qs in all_queries(retriever.index).values() for q in qs]
    for caller in (OUTSIDER, anonymous("public-only"), authenticated("hana", ["hr"])):
        assert leaks(retriever, caller, queries) == [], caller
    # measured: only bare generic headings ("FAQ", "Steps", "解决步骤") missed their page; headed by the title, none
    asked = {pid: derived_queries(p, bare_headings=False) + WRITTEN[pid] for pid, p in restricted(retriever.index).items()}
    assert insider_misses(retriever, asked) == {pid: [] for pid in asked}
