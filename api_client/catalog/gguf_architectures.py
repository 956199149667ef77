"""The causal-LM architectures (config.json `architectures[0]`) that
llama.cpp's HF→GGUF converter knows, so `--method gguf` refuses any other
model at submit, in one line, before a worker spends time on it.

The converter is llama.cpp's own `conversion/` package as AutoRound 0.15.1
vendors it (auto_round/export/export_to_gguf/conversion: its TEXT_MODEL_MAP),
the code that writes qfarm's GGUF files (worker/engines/gguf_export.py). This
is the subset of that map qfarm can load as a causal LM (`…ForCausalLM`,
`…LMHeadModel`; encoders, speech and vision-language wrappers left out).
tests/test_gguf.py checks every entry against the converter the worker has,
so an AutoRound upgrade that drops one fails there, not on a job.
"""

from __future__ import annotations

GGUF_ARCHITECTURES = frozenset({
    "AfmoeForCausalLM", "ApertusForCausalLM", "ArceeForCausalLM", "ArcticForCausalLM", "BaiChuanForCausalLM",
    "BaichuanForCausalLM", "BailingMoeForCausalLM", "BailingMoeV2ForCausalLM", "BailingMoeV3ForCausalLM",
    "BambaForCausalLM", "BitNetForCausalLM", "BitnetForCausalLM", "BloomForCausalLM", "ChameleonForCausalLM",
    "CodeShellForCausalLM", "CogVLMForCausalLM", "Cohere2ForCausalLM", "Cohere2MoeForCausalLM", "CohereForCausalLM",
    "DbrxForCausalLM", "DeciLMForCausalLM", "DeepseekForCausalLM", "DeepseekOCRForCausalLM", "DeepseekV2ForCausalLM",
    "DeepseekV32ForCausalLM", "DeepseekV3ForCausalLM", "DeepseekV4ForCausalLM", "Dots1ForCausalLM",
    "DotsOCRForCausalLM", "Eagle3LlamaForCausalLM", "Ernie4_5ForCausalLM", "Ernie4_5_ForCausalLM",
    "Ernie4_5_MoeForCausalLM", "Exaone4ForCausalLM", "ExaoneForCausalLM", "ExaoneMoEForCausalLM",
    "ExaoneMoeForCausalLM", "FalconForCausalLM", "FalconH1ForCausalLM", "FalconMambaForCausalLM", "GPT2LMHeadModel",
    "GPTBigCodeForCausalLM", "GPTNeoXForCausalLM", "GPTRefactForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
    "Gemma3nForCausalLM", "Gemma4AssistantForCausalLM", "Gemma4ForCausalLM", "Gemma4UnifiedAssistantForCausalLM",
    "GemmaForCausalLM", "Glm4ForCausalLM", "Glm4MoeForCausalLM", "Glm4MoeLiteForCausalLM", "GlmForCausalLM",
    "GlmMoeDsaForCausalLM", "GptOssForCausalLM", "GraniteForCausalLM", "GraniteMoeForCausalLM",
    "GraniteMoeHybridForCausalLM", "GraniteMoeSharedForCausalLM", "GraniteSwitchForCausalLM", "Grok1ForCausalLM",
    "GrokForCausalLM", "GroveMoeForCausalLM", "HYV3ForCausalLM", "HunYuanDenseV1ForCausalLM", "HunYuanMoEV1ForCausalLM",
    "IQuestCoderForCausalLM", "InternLM2ForCausalLM", "InternLM3ForCausalLM", "JAISLMHeadModel", "Jais2ForCausalLM",
    "JambaForCausalLM", "KORMoForCausalLM", "KimiLinearForCausalLM", "LFM2ForCausalLM", "LLaMAForCausalLM",
    "LagunaForCausalLM", "Lfm2ForCausalLM", "Lfm2MoeForCausalLM", "Llama4ForCausalLM", "LlamaForCausalLM",
    "LlavaStableLMEpochForCausalLM", "MPTForCausalLM", "MaincoderForCausalLM", "Mamba2ForCausalLM", "MambaForCausalLM",
    "MambaLMHeadModel", "MellumForCausalLM", "MiMoV2FlashForCausalLM", "MiMoV2ForCausalLM", "MiniCPM3ForCausalLM",
    "MiniCPMForCausalLM", "MiniMaxM1ForCausalLM", "MiniMaxM2ForCausalLM", "MiniMaxM3SparseForCausalLM",
    "MiniMaxText01ForCausalLM", "Ministral3ForCausalLM", "MistralForCausalLM", "MixtralForCausalLM",
    "NanbeigeForCausalLM", "NemotronForCausalLM", "NemotronHForCausalLM", "OLMoForCausalLM", "Olmo2ForCausalLM",
    "Olmo3ForCausalLM", "OlmoForCausalLM", "OlmoeForCausalLM", "OpenELMForCausalLM", "OrionForCausalLM",
    "PLMForCausalLM", "PLaMo2ForCausalLM", "PLaMo3ForCausalLM", "PanguEmbeddedForCausalLM", "Phi3ForCausalLM",
    "PhiForCausalLM", "PhiMoEForCausalLM", "Plamo2ForCausalLM", "Plamo3ForCausalLM", "PlamoForCausalLM",
    "QWenLMHeadModel", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM",
    "Qwen3NextForCausalLM", "Qwen3_5ForCausalLM", "Qwen3_5MoeForCausalLM", "RWForCausalLM", "RWKV6Qwen2ForCausalLM",
    "RWKV7ForCausalLM", "RuGPT3XLForCausalLM", "Rwkv6ForCausalLM", "Rwkv7ForCausalLM", "RwkvHybridForCausalLM",
    "Sarashina2VisionForCausalLM", "SarvamMoEForCausalLM", "SeedOssForCausalLM", "SmallThinkerForCausalLM",
    "SmolLM3ForCausalLM", "SolarOpenForCausalLM", "StableLMEpochForCausalLM", "StableLmForCausalLM",
    "Starcoder2ForCausalLM", "Step3p5ForCausalLM", "TalkieForCausalLM", "UnlimitedOCRForCausalLM", "VLlama3ForCausalLM",
    "XverseForCausalLM", "YoutuForCausalLM",
})
