"""Tiny captioners with random weights, saved in the Hugging Face layout by transformers'
own classes (``save_pretrained``): the real Florence-2 and Llava model code, the real
processors, and real byte-level BPE tokenizers trained here by the ``tokenizers`` library."""

from __future__ import annotations

from pathlib import Path

CORPUS = ["a koala sitting in a tree with green leaves", "an old film of a street at night, grainy",
          "a cartoon cat on a wooden table", "The image shows a man in a red coat walking a dog",
          "Describe this image and its style in a very detailed manner."] * 4


def _bpe(specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=320, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def _fast(tok, **special):
    import transformers

    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>", pad_token="<pad>",
                                                extra_special_tokens={"image_token": "<image>"}, **special)


def tiny_florence2(folder: Path, seed: int = 0) -> Path:
    """A Florence-2 of a few thousand parameters at ``folder``."""
    import torch
    import transformers
    from tokenizers import processors

    bpe = _bpe(["<s>", "<pad>", "</s>", "<unk>", "<image>"])
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer = _fast(bpe)
    images = transformers.CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    images.image_seq_length = 17  # 32 px: 8x8 after the stride-4 stem, 4x4 after stride 2, + 1 pooled
    processor = transformers.Florence2Processor(image_processor=images, tokenizer=tokenizer)
    vision = transformers.Florence2VisionConfig(
        depths=(1, 1), patch_size=(7, 3), patch_stride=(4, 2), patch_padding=(3, 1), patch_prenorm=(False, True),
        embed_dim=(8, 16), num_heads=(1, 2), num_groups=(1, 2), window_size=2, projection_dim=16,
        max_temporal_embeddings=4, max_position_embeddings=8)
    text = transformers.BartConfig(
        vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=160,
        bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0)
    config = transformers.Florence2Config(vision_config=vision, text_config=text, image_token_id=tokenizer.image_token_id)
    torch.manual_seed(seed)
    transformers.Florence2ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tiny_llava(folder: Path, seed: int = 0) -> Path:
    """A LLaVA-1.5 (CLIP vision tower, Llama language model) of a few thousand parameters."""
    import torch
    import transformers

    tokenizer = _fast(_bpe(["<unk>", "<s>", "</s>", "<pad>", "<image>"]))
    images = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = transformers.LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                                            vision_feature_select_strategy="default", num_additional_image_tokens=1)
    vision = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16)
    text = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id,
                                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    transformers.LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
