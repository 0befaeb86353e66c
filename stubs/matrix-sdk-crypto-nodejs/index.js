"use strict";
// matrix-bot-sdk requires this module when it loads but only uses it for end-to-end encryption,
// which hive-matrix keeps off. Every export throws on use so an accidental crypto path fails loudly.
const message = "end-to-end encryption is disabled in hive-matrix (the native crypto module is a stub)";
class Unavailable {
  constructor() {
    throw new Error(message);
  }
}
const names = [
  "OlmMachine",
  "UserId",
  "DeviceId",
  "RoomId",
  "DeviceLists",
  "EncryptionSettings",
  "Attachment",
  "EncryptedAttachment",
  "RequestType",
  "StoreType",
  "KeysUploadRequest",
  "KeysQueryRequest",
  "KeysClaimRequest",
  "ToDeviceRequest",
  "SignatureUploadRequest",
  "RoomMessageRequest",
  "KeysBackupRequest",
  "HistoryVisibility",
  "EncryptionAlgorithm",
];
for (const name of names) {
  module.exports[name] = class extends Unavailable {};
}
module.exports.isStub = true;
