import type { Config } from "../../src/config/schema";
import { createLogger } from "../../src/logging";
import type { Registration } from "../../src/registration";
import { HiveMatrixService } from "../../src/service";
import type { MatrixEvent } from "../../src/store/transactions";
import { captureLogs } from "./logs";

export interface StartedService {
  service: HiveMatrixService;
  /** Every log line the service wrote (debug level), for assertions. */
  logs: string[];
  /** Every event the service handled, in order. */
  seen: MatrixEvent[];
}

/** Starts a service whose logs are captured and whose handled events are recorded. */
export async function startRecordedService(config: Config, registration: Registration): Promise<StartedService> {
  const { lines, destination } = captureLogs();
  const { logger, scrubber } = createLogger({ level: "debug", destination });
  const service = new HiveMatrixService({ config, registration, logger, scrubber });
  const seen: MatrixEvent[] = [];
  service.onEvent((e) => {
    seen.push(e);
  });
  await service.start();
  return { service, logs: lines, seen };
}
