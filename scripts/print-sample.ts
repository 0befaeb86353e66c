import { renderSampleConfig } from "../src/config/sample";
process.stdout.write(renderSampleConfig());
