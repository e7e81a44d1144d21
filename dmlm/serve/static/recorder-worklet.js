// Copies the microphone's first channel to the page (app.js joins the blocks into a wav).
class DmlmRecorder extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.port.postMessage(channel.slice(0));
    return true;
  }
}
registerProcessor("dmlm-recorder", DmlmRecorder);
