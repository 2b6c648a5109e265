package outbox

// Statements for the tests' plans and locks.
const PurgeSQL = purgeSQL
