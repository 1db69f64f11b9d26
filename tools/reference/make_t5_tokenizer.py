"""Writes the tiny T5 tokenizer fixture used by the `orrery-text` tests.

No real T5 vocabulary is available offline, so this trains a small SentencePiece unigram model
with T5's conventions (<pad>=0, </s>=1, <unk>=2, no BOS, nmt_nfkc normalisation, dummy prefix)
on a built-in multilingual corpus, then lets transformers turn it into a T5 tokenizer the same
way it treats a real T5 checkpoint folder: `T5TokenizerFast.from_pretrained(dir)` (which adds
the 100 `<extra_id_N>` sentinels, the Precompiled normaliser, Metaspace pre-tokeniser and the
`$A </s>` template). Only the resulting `tokenizer.json` is kept in the fixture folder.

It then records, for a list of prompts, the ids and attention masks transformers produces with
Cosmos' call `tokenizer(prompt, padding="max_length", max_length=L, truncation=True,
add_special_tokens=True)` for L = 512 and L = 16, in `expected.json`.

Note: `T5TokenizerFast(vocab_file=...)` must not be used: transformers 5 silently ignores the
file and builds a tokenizer with an empty vocabulary.

Run from the repository root (deterministic; re-running rewrites the same files):
    HF_HUB_OFFLINE=1 .venv-ref/bin/python tools/reference/make_t5_tokenizer.py
"""
import io
import json
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import sentencepiece as spm  # noqa: E402
from transformers import T5TokenizerFast  # noqa: E402

OUT = os.path.join("crates", "orrery-text", "tests", "fixtures", "t5_tiny")
VOCAB_SIZE = 800
MAX_LENGTHS = (512, 16)

# A small multilingual corpus: English (Cosmos-style scene descriptions), accented Latin
# languages, German, Greek, Cyrillic, CJK, Arabic, emoji, digits and punctuation. Characters
# that never appear here (e.g. most of Hangul) become <unk>, which the tests also exercise.
CORPUS = """
A robot arm picks up a red cube from a wooden table and places it into a blue bowl.
The camera slowly pans across a busy city street at night, with neon signs reflecting on wet asphalt.
A car drives along a winding mountain road in the rain; the wipers move back and forth.
In a modern warehouse, autonomous forklifts carry pallets between tall metal shelves.
A first-person view from a drone flying over a green forest at sunrise, mist rising from the trees.
A humanoid robot walks through a kitchen, opens the refrigerator and takes out a bottle of water.
The video shows a close-up of hands assembling a small electronic circuit on a workbench.
A truck turns left at a busy intersection while pedestrians wait at the crosswalk.
Waves crash against rocky cliffs under a cloudy sky; seagulls fly above the water.
A dog runs across a sunny park, chasing a yellow ball thrown by a child.
The scene is captured with a static camera, high resolution, realistic lighting, 4K, 30 fps.
Sharp focus, natural colors, smooth motion, no artifacts, photorealistic detail.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 25 42 100 256 512 1024 2048 3.14 2.718 1,000,000 50% 7/8.
Punctuation: "quotes", 'single', (parentheses), [brackets], {braces}, <angles>, a-b, a_b, a/b, a\\b.
More: ! ? . , ; : ... -- @ # $ % ^ & * + = ~ ` | © ® ™ € £ ¥ ° ± × ÷ § ¶ • – — … « » ‹ › “ ” ‘ ’.
Une voiture rouge roule lentement sur une route de campagne, près d'un vieux château.
L'été dernier, nous avons visité la forêt où les élèves étudiaient les oiseaux.
Le garçon mange une crème brûlée et un café au lait à côté de la fenêtre.
Un robot limpia la mesa de la cocina mientras el niño juega con su perro pequeño.
¿Dónde está la estación? ¡Qué día tan bonito! El señor habla español y pingüino.
O menino está a correr na praia; a água está fria e o céu está azul. Não, obrigado.
Il gatto nero dorme sul divano; la città è tranquilla e il caffè è già pronto.
Der Roboter greift nach dem Würfel. Die Straße ist naß und die Bäume sind grün. Fußgänger überqueren.
Größe, Übung, Äpfel, Öl, schön, müde, Mädchen, Brücke, Zürich, München.
Ελληνικά: το ρομπότ περπατά στον δρόμο και η γάτα κοιμάται στον ήλιο.
Русский: робот идёт по улице, а кошка спит на солнце. Машина едет быстро.
日本語：ロボットが赤い箱を持ち上げて、青いお皿に置きます。東京の夜景はとてもきれいです。
中文：一辆汽车在雨中沿着山路行驶。机器人在厨房里走动，打开冰箱。城市的街道很热闹。
这是一个测试句子，包含中文字符和标点符号。我们喜欢看日出和日落。
العربية: الروبوت يمشي في الشارع والقطة نائمة في الشمس.
Emoji: 🤖 🚗 🌧️ 🌲 🐶 🎥 ✨ 😀 👍 ❤️ 🔥 🌍 🚀 🍕 ☀️ 🌙 ⭐ 🎉
Mixed: café naïve résumé coöperate façade jalapeño piñata déjà vu Ångström Øresund Łódź Dvořák.
Full-width and compatibility forms: ＡＢＣ ａｂｃ １２３ ！ ？ ﬁ ﬂ ① ② ③ ㎞ ㎏ ½ ¼ ² ³ ™ Ⅳ.
Whitespace    runs	tabs
newlines and trailing spaces   are normal in prompts.
A cinematic shot of a futuristic city with flying cars, glass skyscrapers and holographic billboards.
An industrial robot welds steel parts on an assembly line, sparks flying, slow motion.
A person pours coffee into a white mug on a marble counter, steam rising, morning light.
A bicycle rider crosses a bridge over a river while boats pass underneath.
Snow falls on a quiet village street; warm light glows from the windows of small houses.
"""


def corpus_lines():
    lines = [line.strip() for line in CORPUS.strip().splitlines() if line.strip()]
    # Repeat with small variations so the unigram trainer sees frequent pieces more than once.
    out = []
    for rep in range(3):
        for i, line in enumerate(lines):
            out.append(line if (i + rep) % 2 == 0 else line.lower())
    return out


def train_spiece(path):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_writer=model,
        model_type="unigram",
        vocab_size=VOCAB_SIZE,
        hard_vocab_limit=False,
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc",
        add_dummy_prefix=True,
        remove_extra_whitespaces=True,
        split_digits=False,
        byte_fallback=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    with open(path, "wb") as f:
        f.write(model.getvalue())


LONG = " ".join(
    [
        "A robot arm picks up a red cube, then a blue sphere, then a green cylinder, 1 2 3 4 5 6 7 8 9 10;",
        "the camera pans across the wooden table while the café lights flicker — 日本語 テスト 🤖.",
    ]
    * 40
)

PROMPTS = [
    "",
    " ",
    "a",
    "A robot arm picks up a red cube from a wooden table.",
    "The teal robot is cooking food in a kitchen. Steam rises in a simmering pot as the robot chops "
    "vegetables on a worn wooden cutting board. Copper pans hang from an overhead rack, catching glints "
    "of afternoon light, while a well-stocked spice rack displays an array of colorful jars.",
    "A sleek, humanoid robot stands in a vast warehouse filled with neatly stacked cardboard boxes on "
    "industrial shelves. The robot's metallic body gleams under the bright, even lighting, highlighting "
    "its futuristic design and intricate joints.",
    "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, "
    "over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas, "
    "underexposed and overexposed scenes, poor color balance, washed out colors, choppy sequences, jerky "
    "movements, low frame rate, artifacting, color banding, unnatural transitions, outdated special effects, "
    "fake elements, unconvincing visuals, poorly edited content, jump cuts, visual noise, and flickering. "
    "Overall, the video is of poor quality.",
    "café naïve résumé — déjà vu à Zürich; Größe ÜBUNG",
    "e\u0301 vs \u00e9, a\u0308 vs \u00e4, n\u0303 and combining marks o\u0302\u0323",
    "ＡＢＣ ａｂｃ １２３！？ ﬁnal ﬂow ① ½ ㎞ ™ Ⅳ",
    "日本語：ロボットが赤い箱を持ち上げます。",
    "一辆汽车在雨中沿着山路行驶。",
    "한국어 문장은 어휘에 없습니다",
    "🤖🚗 robots 🌧️ in the rain 👍🏽 ❤️ 🏳️‍🌈",
    "   leading spaces",
    "trailing spaces   ",
    "multiple     spaces    between   words",
    "line one\nline two\r\nline three",
    "tabs\tbetween\t\twords\t",
    "\u00a0non-breaking\u00a0space and zero\u200bwidth and ideographic\u3000space",
    "<extra_id_0> a robot <extra_id_1> the table <extra_id_99>",
    "text with </s> inside and <pad> and <unk> literally",
    "Numbers 3.14159, 1,000,000 and 2048x1024 @ 30fps (50%)",
    "Punctuation!!! ??? ... --- \"quoted\" 'single' [brackets] {braces} <angles>",
    "ALL CAPS SENTENCE WITH ROBOTS AND CARS",
    "Русский: робот идёт по улице. Ελληνικά: το ρομπότ.",
    "العربية: الروبوت يمشي",
    "\u0000control\u0007chars\u001b[0m and \ufeffBOM",
    LONG,
]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "spm")
        os.makedirs(src)
        train_spiece(os.path.join(src, "spiece.model"))
        tok = T5TokenizerFast.from_pretrained(src)
        saved = os.path.join(tmp, "saved")
        tok.save_pretrained(saved)

        os.makedirs(OUT, exist_ok=True)
        for name in os.listdir(OUT):
            os.remove(os.path.join(OUT, name))
        shutil.copy(os.path.join(saved, "tokenizer.json"), os.path.join(OUT, "tokenizer.json"))

    # Re-load from the written fixture, as a user would load a downloaded T5 folder.
    tok = T5TokenizerFast.from_pretrained(OUT)
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1 and tok.unk_token_id == 2, (
        tok.pad_token_id,
        tok.eos_token_id,
        tok.unk_token_id,
    )
    # The tokenizer.json must carry the whole pipeline for the Rust side.
    with open(os.path.join(OUT, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    assert tj["normalizer"] is not None and "Precompiled" in json.dumps(tj["normalizer"]), tj["normalizer"]
    assert tj["post_processor"]["type"] == "TemplateProcessing", tj["post_processor"]

    cases = []
    for prompt in PROMPTS:
        case = {"prompt": prompt}
        for max_length in MAX_LENGTHS:
            enc = tok(prompt, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True)
            ids, mask = enc["input_ids"], enc["attention_mask"]
            assert len(ids) == max_length and len(mask) == max_length
            n = sum(mask)
            # Record only the real tokens: the rest is padding (id 0, mask 0), checked by the tests.
            assert all(i == tok.pad_token_id for i in ids[n:]) and all(m == 1 for m in mask[:n])
            assert all(m == 0 for m in mask[n:])
            case[f"ids_{max_length}"] = ids[:n]
        untruncated = tok(prompt, add_special_tokens=True)["input_ids"]
        case["untruncated_len"] = len(untruncated)
        cases.append(case)

    assert any(c["untruncated_len"] > 512 for c in cases), "need a prompt longer than 512 tokens"
    expected = {
        "generator": "tools/reference/make_t5_tokenizer.py",
        "call": 'tokenizer(prompt, padding="max_length", max_length=L, truncation=True, add_special_tokens=True)',
        "note": "ids_L lists the real tokens only; positions after them are pad id 0 with attention_mask 0",
        "max_lengths": list(MAX_LENGTHS),
        "vocab_size": len(tok),
        "pad_id": tok.pad_token_id,
        "eos_id": tok.eos_token_id,
        "unk_id": tok.unk_token_id,
        "cases": cases,
    }
    path = os.path.join(OUT, "expected.json")
    with open(path, "w", encoding="utf-8") as f:
        # One case per line keeps the committed file compact but diffable.
        f.write("{\n")
        head = [k for k in expected if k != "cases"]
        for k in head:
            f.write(f"  {json.dumps(k)}: {json.dumps(expected[k], ensure_ascii=False)},\n")
        f.write('  "cases": [\n')
        f.write(",\n".join("    " + json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in cases))
        f.write("\n  ]\n}\n")

    for name in sorted(os.listdir(OUT)):
        p = os.path.join(OUT, name)
        print(f"wrote {p} ({os.path.getsize(p)} bytes)")
    print(f"vocab size {len(tok)}, {len(cases)} prompts, max lengths {MAX_LENGTHS}")


if __name__ == "__main__":
    main()
