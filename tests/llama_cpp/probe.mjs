// A real llama.cpp (node-llama-cpp's prebuilt CPU binaries) reading a GGUF file, for tests/test_llama_cpp.py.
// stdin: {"model": PATH, "texts": [...], "prompts": [...], "max_tokens": N}
// stdout: one JSON object: the special tokens llama.cpp found, whether it puts BOS before a prompt, the ids of each
// text (parsing special tokens, as llama-cli and llama-server do for a rendered chat), and the greedy reply to each
// prompt up to the first end-of-generation token.
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const input = JSON.parse(await new Promise((resolve) => {
    let text = "";
    process.stdin.on("data", (chunk) => text += chunk);
    process.stdin.on("end", () => resolve(text));
}));
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.warn});
const model = await llama.loadModel({modelPath: input.model});
const out = {
    bos: model.tokens.bos, eos: model.tokens.eos, eot: model.tokens.eot,
    prepends_bos: model.tokens.shouldPrependBosToken,
    texts: (input.texts || []).map((text) => Array.from(model.tokenize(text, true))),
    replies: [],
};
if ((input.prompts || []).length) {
    const context = await model.createContext({contextSize: 1024});
    for (const prompt of input.prompts) {
        const sequence = context.getSequence();
        const reply = [];
        for await (const token of sequence.evaluate(model.tokenize(prompt, true), {temperature: 0})) {
            if (model.isEogToken(token) || reply.length >= (input.max_tokens || 32)) break;
            reply.push(token);
        }
        out.replies.push({tokens: reply, text: model.detokenize(reply)});
        sequence.dispose();
    }
}
console.log(JSON.stringify(out));
process.exit(0);
