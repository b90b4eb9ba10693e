// herald.js: placeholder, replaced by the client in the next commit.
export class Herald {}
