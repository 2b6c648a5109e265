package outbox

// Statements for the tests' plans and locks.
const (
	CandidatesSQL = candidatesSQL
	PurgeSQL      = purgeSQL
)
