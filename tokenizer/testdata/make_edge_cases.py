#!/usr/bin/env python3
"""Regenerates edge_cases.jsonl and unicode_classes.txt from the reference implementation.

Needs the `tokenizers` package from pip (the files were made with tokenizers 0.23.3). Run from
the repository root:

    python3 tokenizer/testdata/make_edge_cases.py

edge_cases.jsonl: one object a line: `text`, `ids` (encode without added tokens), `pieces`
(the pre-tokenizer's split of the NFC text, as text; only for texts without special tokens),
`decoded` (decode(ids), special tokens kept) and, for some texts, `prefix_decoded`
(decode(ids[:k]) for k = 0..len(ids), which exercises cuts inside multi-byte characters).

nfc_reference_marks.txt: the code points that the reference's NFC moves or changes when they
follow "x" and precede U+0334 (class 1), or follow "x" U+0301 (class 230): those it gives a
non-zero combining class (or a decomposition). The reference's NFC data is older than Unicode 15;
marks it does not know stay in place.

unicode_data.inc (beside the library sources): those classes, and the code points that the
reference's older NFC data leaves alone while utf8proc would normalize them, as C++ tables.

unicode_classes.txt: the class (L, N or S for whitespace; everything else is other) of every
code point as the reference's regex engine sees it, found by pre-tokenizing probe strings,
written as ranges `CLASS FIRST LAST` in hex.
"""
import ctypes
import ctypes.util
import json
import random

from tokenizers import Tokenizer

TOKENIZER = "tokenizer/testdata/qwen2/tokenizer.json"


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


U2B = bytes_to_unicode()

CASES = [
    "", " ", "\t", "\n", "\r", "\r\n", "   ", "\n\n\n", "\r\n\r\n", " \r\n", "\r\n  ",
    "'s 't 're 've 'm 'll 'd", "'S 'T 'RE 'Re 'rE 'VE 'vE 'M 'LL 'lL 'Ll 'D",
    "don't I'M we'LL they'Re she'D it'S", "'ſ 'ſa x'ſ", "''s", "'x 'sa 'tt", "a's", "'",
    " 's", "\"'re\"", "''", "'\n", "'1", "'é", "O'Neil's", "rock'n'roll",
    "   hello", "hello   ", "a  b", "a \t b", "\t\tfoo", " \u00a0foo", "\u3000x", "x\u2028y",
    "x\u2029y", "\u0085a", "a\u200bb", "a \n b", "a\n\n\nb", "a\r\n  b", "end \n ", "x\f\vy",
    "foo \n\n bar  \n", "  \t\n \t x", "x \u00a0 ", "\u1680a", "\u2000\u200a\u202f\u205fa",
    "\u180ea", "\ufeffa", "a\u00adb", "\x1c\x1d\x1e\x1fa",
    "12345", "\u0663\u0664\u0665", "\u00bd \u00be \u216b \u00b2", "a1b2", " 1", "x\u00b2",
    "\u2460\u2461", "3.14159", "1,000,000", "v1.2.3-rc4", "\U0001d7d8\U0001d7d9",
    "na\u00efve", "nai\u0308ve", "e\u0301", "x\u0301y", "\u0915\u093c", "\u1100\u1161\u11a8",
    "\u212b", "\u2126", "\ufb01", "\u02b0", "\u01c5", "\u65e5\u672c\u8a9e", "\u30fc",
    "\u0915\u094d\u0937\u093f", "a\u0300\u0316b", "\u1e9b\u0323", "\u0344", "\uf900",
    "\u0958", "\u2adc", "\U0001d15e", "\u0f73", "Ä\u0323", "A\u0323\u0308", "\u00c4\u0328",
    "\U00011935\U00011930", "\U00011938", "x\u1df6\u0334", "x\u0301\u1df6\u0316", "a\u0334\u1ac0",
    "e\u0301\U0001e4ec\u0316",
    ".com", "$100", "#hashtag", "@user", "C++", "a_b", "foo-bar", "...", "!!!\n\n", "?\r\n",
    ", \n", " ,,,", "(x)", " (\n", "[]{}", "~/.bashrc", "http://example.com/a?b=c&d=e",
    "\U0001f44d\U0001f3fd", "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",
    "\U0001f1e9\U0001f1ea", "\u2764\ufe0f", "a\U0001f600b", " \U0001f600\U0001f600",
    "\U0001f600\n", "\U0001f600 hi", "x \U0001f600",
    "<|endoftext|>", "<|endof", "a<|endoftext|>b", "<|endoftext|><|im_start|>",
    "<|im_start|>user\nhi<|im_end|>", "<<|endoftext|>>", "<|endoftext|", "<|im_start|<|im_end|>",
    " <|endoftext|> ", "<|endoftext|>\n\n", "text<|endoftext|>", "<|im_end|>'s",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u05e9\u05dc\u05d5\u05dd", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "\u0928\u092e\u0938\u094d\u0924\u0947",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
    "\u0393\u03b5\u03b9\u03ac", "\u4f60\u597d\uff0c\u4e16\u754c\uff01",
    "\u30ab\u30bf\u30ab\u30ca\u3001\u3072\u3089\u304c\u306a\u3002", "\ud55c\uad6d\uc5b4",
    "def f(x):\n    return x**2\n", "    \n\tfoo", "int main() {\r\n  return 0;\r\n}",
    "\x00\x01\x7f", "a\x00b", "a" * 300, " " * 200, "1" * 50, "\U0001f600" * 50, "ab" * 200,
    "\u00e9" * 100, " hello" * 40, "\n" * 70 + "x", "!" * 130,
]

# Characters that sit on the regex's class boundaries, for random strings.
POOL = list("aZé'sStTrReEvVmMlLdD 1٣²½\t\n\r\u00a0\u3000\u2028\u0085.,!?-_()<|>") + [
    "\u0301", "\u0308", "\u093c", "\u1161", "\u11a8", "\u1100", "\u017f", "\u4e2d", "\u30fc",
    "\U0001f600", "\u200d", "\ufe0f", "\u200b", "\x00", "\u2126", "\ufb01", "\u01c5", "\u02b0",
    "<|endoftext|>", "<|im_start|>", "<|endof", "'s", "'LL", "\r\n",
]

PREFIX_DECODE = {"\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466", "\ud55c\uad6d\uc5b4",
                 "\u4f60\u597d\uff0c\u4e16\u754c\uff01", "\U0001f44d\U0001f3fd",
                 "\u0928\u092e\u0938\u094d\u0924\u0947", "\U0001f600" * 50}


def pieces_of(tok, text):
    normalized = tok.normalizer.normalize_str(text)
    out = []
    for piece, _ in tok.pre_tokenizer.pre_tokenize_str(normalized):
        out.append(bytes(U2B[c] for c in piece).decode("utf-8"))
    return out


def edge_cases(tok):
    rng = random.Random(20240611)
    texts = list(CASES)
    for _ in range(400):
        texts.append("".join(rng.choice(POOL) for _ in range(rng.randint(1, 24))))
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    lines = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        obj = {"text": text, "ids": ids}
        if not any(s in text for s in specials):
            obj["pieces"] = pieces_of(tok, text)
        obj["decoded"] = tok.decode(ids, skip_special_tokens=False)
        if text in PREFIX_DECODE:
            obj["prefix_decoded"] = [tok.decode(ids[:k], skip_special_tokens=False)
                                     for k in range(len(ids) + 1)]
        lines.append(json.dumps(obj, ensure_ascii=False))
    with open("tokenizer/testdata/edge_cases.jsonl", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def piece_starts(pt, text):
    return {start for _, (start, _) in pt.pre_tokenize_str(text)}


def unicode_classes(tok):
    pt = tok.pre_tokenizer
    cps = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    classes = {}
    step = 1 << 15
    for base in range(0, len(cps), step):
        chunk = cps[base:base + step]
        # "1x?x": the probe ? is a letter if "x?x" is one piece, a number if ? and the second
        # x start pieces, else whitespace or other; "1!?!" then tells those two apart ("!?!" is
        # one piece only when ? is other).
        s1 = "".join("1x" + chr(cp) + "x" for cp in chunk)
        s2 = "".join("1!" + chr(cp) + "!" for cp in chunk)
        st1 = piece_starts(pt, s1)
        st2 = piece_starts(pt, s2)
        for k, cp in enumerate(chunk):
            c_start, x_start = 4 * k + 2 in st1, 4 * k + 3 in st1
            if chr(cp) in "\r\n":
                cls = "S"
            elif not c_start and not x_start:
                cls = "L"
            elif c_start and x_start:
                cls = "N"
            elif 4 * k + 2 in st2:
                cls = "S"
            else:
                cls = "O"
            classes[cp] = cls
    ranges = []
    for cp in sorted(classes):
        cls = classes[cp]
        if cls == "O":
            continue
        if ranges and ranges[-1][0] == cls and ranges[-1][2] == cp - 1:
            ranges[-1][2] = cp
        else:
            ranges.append([cls, cp, cp])
    with open("tokenizer/testdata/unicode_classes.txt", "w") as f:
        f.write("# Generated by make_edge_cases.py: CLASS FIRST LAST (hex); L letter, N number,\n")
        f.write("# S whitespace; code points not listed (surrogates aside) are other.\n")
        for cls, a, b in ranges:
            f.write(f"{cls} {a:X} {b:X}\n")


def write_ranges(path, header, cps):
    ranges = []
    for cp in sorted(cps):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    with open(path, "w") as f:
        f.write(header)
        for a, b in ranges:
            f.write(f"{a:X} {b:X}\n")


def nfc_reference_marks(tok):
    norm = tok.normalizer
    known = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF or cp < 0x80:
            continue
        c = chr(cp)
        a = "x" + c + "\u0334"
        b = "x\u0301" + c
        if norm.normalize_str(a) != a or norm.normalize_str(b) != b:
            known.append(cp)
    write_ranges("tokenizer/testdata/nfc_reference_marks.txt",
                 "# Generated by make_edge_cases.py: FIRST LAST (hex) of the code points that the\n"
                 "# reference's NFC reorders or changes in the probes described there.\n", known)


def read_ranges(path):
    out = []
    for line in open(path):
        if line.startswith("#"):
            continue
        f = line.split()
        out.append((f[0], int(f[1], 16), int(f[2], 16)) if len(f) == 3 else
                   ("", int(f[0], 16), int(f[1], 16)))
    return out


def utf8proc_functions():
    lib = ctypes.CDLL(ctypes.util.find_library("utf8proc"))
    lib.utf8proc_get_property.restype = ctypes.POINTER(ctypes.c_int16 * 2)
    for name in ("utf8proc_NFC", "utf8proc_NFD"):
        getattr(lib, name).restype = ctypes.c_void_p
        getattr(lib, name).argtypes = [ctypes.c_char_p]
    libc = ctypes.CDLL(None)
    libc.free.argtypes = [ctypes.c_void_p]

    def call(name, text):
        ptr = getattr(lib, name)(text.encode())
        out = ctypes.string_at(ptr).decode()
        libc.free(ptr)
        return out

    def ccc(cp):
        return lib.utf8proc_get_property(cp).contents[1]

    return ccc, lambda t: call("utf8proc_NFC", t), lambda t: call("utf8proc_NFD", t)


def unicode_data_inc(tok):
    """Writes tokenizer/unicode_data.inc: the classes, and the code points where utf8proc's newer
    normalization data would disagree with the reference (kept verbatim, as the reference does)."""
    ccc, nfc, nfd = utf8proc_functions()
    marks = set()
    for _, a, b in read_ranges("tokenizer/testdata/nfc_reference_marks.txt"):
        marks.update(range(a, b + 1))
    inert = set()
    for cp in range(0x80, 0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        if ccc(cp) > 0 and cp not in marks:
            inert.add(cp)
        d = nfd(chr(cp))
        if d != chr(cp) and tok.normalizer.normalize_str(d) != nfc(d):
            inert.add(cp)
            inert.update(ord(ch) for ch in d)
    with open("tokenizer/unicode_data.inc", "w") as f:
        f.write("// Generated by tokenizer/testdata/make_edge_cases.py from the reference "
                "tokenizer.\n")
        f.write("// {first, last, class}: 1 letter, 2 number, 3 whitespace; others are class 0.\n")
        f.write("static constexpr CodePointRange kClassRanges[] = {\n")
        cls_num = {"L": 1, "N": 2, "S": 3}
        for cls, a, b in read_ranges("tokenizer/testdata/unicode_classes.txt"):
            f.write(f"    {{0x{a:X}, 0x{b:X}, {cls_num[cls]}}},\n")
        f.write("};\n")
        f.write("// Code points the reference's (older) NFC data does not know: never "
                "normalized.\n")
        f.write("static constexpr CodePointRange kNfcReferenceInert[] = {\n")
        ranges = []
        for cp in sorted(inert):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp])
        for a, b in ranges:
            f.write(f"    {{0x{a:X}, 0x{b:X}, 0}},\n")
        f.write("};\n")


def main():
    tok = Tokenizer.from_file(TOKENIZER)
    edge_cases(tok)
    unicode_classes(tok)
    nfc_reference_marks(tok)
    unicode_data_inc(tok)


if __name__ == "__main__":
    main()
