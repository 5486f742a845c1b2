import pytest

from nanovlm.tokenizer import CHAT_END, CHAT_START, IMAGE_TOKEN, Tokenizer, TokenizerError

from conftest import tiny_config

TEXTS = ["There is a big red ball on the green grass.", "Look at the two small blue boxes!"] * 30


def test_trained_bpe_round_trips_any_text():
    tok = Tokenizer.train(TEXTS, vocab_size=300)
    assert len(tok) <= 300
    for text in TEXTS[:2] + ["ünïcödé never seen 🙂"]:
        assert tok.decode(tok.encode(text)) == text
    # the BPE learned whole frequent words
    assert len(tok.encode("There is a big red ball")) < len("There is a big red ball") // 2


def test_split_digits_writes_every_digit_alone_and_round_trips(tmp_path):
    numbers = ["Account 6546 3496 7512, balance 1,234.56 on 2023-01-05"] * 40
    merged = Tokenizer.train(numbers, vocab_size=300)
    assert any(len(t) > 1 and t.isdigit() for t in merged.hf.get_vocab())      # plain BPE merges digit pairs
    split = Tokenizer.train(numbers, vocab_size=300, split_digits=True)
    assert not any(len(t) > 1 and any(c.isdigit() for c in t) for t in split.hf.get_vocab())
    pieces = [split.hf.id_to_token(i) for i in split.encode("PAN 12.50")]
    assert pieces[-5:] == ["1", "2", ".", "5", "0"]
    for text in numbers[:1] + ["x99y 0007 ünï 🙂"]:
        assert split.decode(split.encode(text)) == text
    split.save(tmp_path / "tokenizer.json")                                     # the rule travels with the file
    again = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert again.encode("Account 6546") == split.encode("Account 6546")


def test_special_tokens_in_text_stay_text_and_configure_the_model():
    tok = Tokenizer.train(TEXTS, vocab_size=300)
    ids = tok.encode(f"{IMAGE_TOKEN}{IMAGE_TOKEN}hello")     # typed by a user: characters, never the placeholder
    assert tok.image_token_id not in ids and tok.decode(ids) == f"{IMAGE_TOKEN}{IMAGE_TOKEN}hello"
    cfg = tok.configure(tiny_config())
    assert cfg.image_token_id == tok.image_token_id and cfg.eos_token_id == tok.eos_token_id
    assert cfg.decoder.vocab_size >= len(tok) and cfg.decoder.vocab_size % 64 == 0
    assert tok.decode([tok.eos_token_id, *tok.encode("hi")]) == "hi"


def test_embedding_grows_with_added_tokens():
    tok = Tokenizer.train(TEXTS, vocab_size=300)
    tok.hf.add_special_tokens([f"<|extra{i}|>" for i in range(600)])
    cfg = tok.configure(tiny_config())                      # tiny has vocab 512 < 300 + 600
    assert cfg.decoder.vocab_size >= len(tok)


def test_load_hf_tokenizer_json_adds_missing_specials(tmp_path):
    tok = Tokenizer.train(TEXTS, vocab_size=300)
    tok.hf.add_special_tokens([CHAT_START, CHAT_END])
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = Tokenizer.from_file(path)
    assert loaded.has_chat_template and loaded.eos_token == CHAT_END
    with pytest.raises(TokenizerError, match="not found"):
        Tokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        Tokenizer.from_file(tmp_path / "bad.json")


def test_prefix_conversation_loss_only_on_answers():
    tok = Tokenizer.train(TEXTS, vocab_size=300)
    texts = [{"user": "Describe the picture.", "assistant": "There is a big red ball."}]
    ids, loss = tok.encode_conversation(texts, n_image_tokens=4)
    assert ids[:4] == [tok.image_token_id] * 4 and not any(loss[:4])
    assert ids[-1] == tok.eos_token_id and loss[-1]
    answer = [i for i, l in zip(ids, loss) if l][:-1]
    assert tok.decode(answer) == "There is a big red ball."
    prompt, prompt_loss = tok.encode_conversation([{"user": "Describe the picture.", "assistant": "There is"}],
                                                  n_image_tokens=4, for_generation=True)
    assert ids[: len(prompt)] == prompt and not any(prompt_loss)


def test_chat_conversation():
    tok = Tokenizer.train(TEXTS, vocab_size=300)
    tok.hf.add_special_tokens([CHAT_START, CHAT_END])
    tok = Tokenizer(tok.hf)
    texts = [{"user": "What color is the ball?", "assistant": "red"}, {"user": "How many?", "assistant": "two"}]
    ids, loss = tok.encode_conversation(texts, n_image_tokens=3, fusion="placeholder")
    assert ids.count(tok.image_token_id) == 3
    answers = tok.decode([i for i, l in zip(ids, loss) if l], skip_special_tokens=False)
    assert answers == f"red{CHAT_END}two{CHAT_END}"
