// Types are intentionally loose: nothing in hive-matrix touches these classes.
export declare const isStub: true;
export declare class OlmMachine {
  private constructor();
}
export declare class UserId {
  constructor(id: string);
}
export declare class DeviceId {
  constructor(id: string);
}
export declare class RoomId {
  constructor(id: string);
}
export declare class DeviceLists {
  constructor();
}
export declare class EncryptionSettings {
  constructor();
}
export declare class Attachment {
  constructor();
}
export declare class EncryptedAttachment {
  constructor();
}
export declare enum RequestType {
  KeysUpload = 0,
}
export declare enum StoreType {
  Sqlite = 0,
}
