"""The causal-LM architectures (config.json `architectures[0]`) that
llama.cpp's HF→GGUF converter can write, so `--method gguf` refuses any
other model at submit, in one line, before a worker spends time on it.

The converter is llama.cpp's own `conversion/` package as AutoRound 0.15.1
vendors it (auto_round/export/export_to_gguf/conversion: its TEXT_MODEL_MAP),
the code that writes qfarm's GGUF files (worker/engines/gguf_export.py),
limited to what qfarm can load as a causal LM (`…ForCausalLM`,
`…LMHeadModel`; encoders, speech and vision-language wrappers left out).

That map names more architectures than the converter can write here: its
modules for Qwen2/3, Gemma, DeepSeek, Granite, Cohere, MiniMax… name GGUF
architectures (`MODEL_ARCH.DFLASH`, `GEMMA4_ASSISTANT`, …) that the `gguf`
library qfarm installs (0.19.0, the newest on PyPI) does not have, so they
fail to import on the worker. Those are NEEDS_NEWER_GGUF, refused at submit
with that reason. tests/test_gguf.py loads the converter of every entry of
both sets, so a library upgrade that moves one fails there, not on a job.
"""

from __future__ import annotations

GGUF_LIBRARY = "gguf 0.19.0"

GGUF_ARCHITECTURES = frozenset({
    "AfmoeForCausalLM", "ApertusForCausalLM", "ArceeForCausalLM", "ArcticForCausalLM", "BaiChuanForCausalLM",
    "BaichuanForCausalLM", "BailingMoeForCausalLM", "BailingMoeV2ForCausalLM", "BitNetForCausalLM",
    "BitnetForCausalLM", "BloomForCausalLM", "ChameleonForCausalLM", "CodeShellForCausalLM", "CogVLMForCausalLM",
    "DbrxForCausalLM", "DeciLMForCausalLM", "Eagle3LlamaForCausalLM", "Ernie4_5ForCausalLM", "Ernie4_5_ForCausalLM",
    "Ernie4_5_MoeForCausalLM", "Exaone4ForCausalLM", "ExaoneForCausalLM", "ExaoneMoEForCausalLM",
    "ExaoneMoeForCausalLM", "FalconForCausalLM", "FalconH1ForCausalLM", "FalconMambaForCausalLM", "GPT2LMHeadModel",
    "GPTBigCodeForCausalLM", "GPTNeoXForCausalLM", "GPTRefactForCausalLM", "GlmForCausalLM", "GptOssForCausalLM",
    "Grok1ForCausalLM", "GrokForCausalLM", "GroveMoeForCausalLM", "IQuestCoderForCausalLM", "InternLM2ForCausalLM",
    "InternLM3ForCausalLM", "JAISLMHeadModel", "Jais2ForCausalLM", "JambaForCausalLM", "LLaMAForCausalLM",
    "Llama4ForCausalLM", "LlamaForCausalLM", "LlavaStableLMEpochForCausalLM", "MPTForCausalLM",
    "MaincoderForCausalLM", "Mamba2ForCausalLM", "MambaForCausalLM", "MambaLMHeadModel", "MiMoV2FlashForCausalLM",
    "MiMoV2ForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "OLMoForCausalLM", "Olmo2ForCausalLM",
    "Olmo3ForCausalLM", "OlmoForCausalLM", "OlmoeForCausalLM", "OpenELMForCausalLM", "OrionForCausalLM",
    "PLMForCausalLM", "PLaMo2ForCausalLM", "PLaMo3ForCausalLM", "PanguEmbeddedForCausalLM", "Phi3ForCausalLM",
    "PhiForCausalLM", "PhiMoEForCausalLM", "Plamo2ForCausalLM", "Plamo3ForCausalLM", "PlamoForCausalLM",
    "RWForCausalLM", "RWKV6Qwen2ForCausalLM", "RWKV7ForCausalLM", "RuGPT3XLForCausalLM", "Rwkv6ForCausalLM",
    "Rwkv7ForCausalLM", "RwkvHybridForCausalLM", "Sarashina2VisionForCausalLM", "SarvamMoEForCausalLM",
    "SeedOssForCausalLM", "SmallThinkerForCausalLM", "SmolLM3ForCausalLM", "StableLMEpochForCausalLM",
    "StableLmForCausalLM", "Starcoder2ForCausalLM", "VLlama3ForCausalLM", "XverseForCausalLM"
})

NEEDS_NEWER_GGUF = frozenset({
    "BailingMoeV3ForCausalLM", "BambaForCausalLM", "Cohere2ForCausalLM", "Cohere2MoeForCausalLM",
    "CohereForCausalLM", "DeepseekForCausalLM", "DeepseekOCRForCausalLM", "DeepseekV2ForCausalLM",
    "DeepseekV32ForCausalLM", "DeepseekV3ForCausalLM", "DeepseekV4ForCausalLM", "Dots1ForCausalLM",
    "DotsOCRForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3nForCausalLM",
    "Gemma4AssistantForCausalLM", "Gemma4ForCausalLM", "Gemma4UnifiedAssistantForCausalLM", "GemmaForCausalLM",
    "Glm4ForCausalLM", "Glm4MoeForCausalLM", "Glm4MoeLiteForCausalLM", "GlmMoeDsaForCausalLM", "GraniteForCausalLM",
    "GraniteMoeForCausalLM", "GraniteMoeHybridForCausalLM", "GraniteMoeSharedForCausalLM",
    "GraniteSwitchForCausalLM", "HYV3ForCausalLM", "HunYuanDenseV1ForCausalLM", "HunYuanMoEV1ForCausalLM",
    "KORMoForCausalLM", "KimiLinearForCausalLM", "LFM2ForCausalLM", "LagunaForCausalLM", "Lfm2ForCausalLM",
    "Lfm2MoeForCausalLM", "MellumForCausalLM", "MiniCPM3ForCausalLM", "MiniCPMForCausalLM", "MiniMaxM1ForCausalLM",
    "MiniMaxM2ForCausalLM", "MiniMaxM3SparseForCausalLM", "MiniMaxText01ForCausalLM", "Ministral3ForCausalLM",
    "NanbeigeForCausalLM", "NemotronForCausalLM", "NemotronHForCausalLM", "QWenLMHeadModel", "Qwen2ForCausalLM",
    "Qwen2MoeForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Qwen3NextForCausalLM", "Qwen3_5ForCausalLM",
    "Qwen3_5MoeForCausalLM", "SolarOpenForCausalLM", "Step3p5ForCausalLM", "TalkieForCausalLM",
    "UnlimitedOCRForCausalLM", "YoutuForCausalLM"
})
