//! The vsock packet header and the checks every packet from the guest goes through.

use vm_memory::ByteValued;

pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

pub const HEADER_LEN: usize = 44;

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[repr(C, packed)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

// SAFETY: Header is packed plain old data: no padding, and every bit pattern is a valid
// value of each integer field.
unsafe impl ByteValued for Header {}

/// Why a packet from the guest is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor chain shorter than a vsock header")]
    ShortHeader,
    #[error("payload length {len} exceeds what the chain holds ({avail})")]
    LengthBeyondChain { len: u32, avail: usize },
    #[error("payload length {0} is over the {max} byte limit", max = super::defs::MAX_PKT_PAYLOAD)]
    TooLong(u32),
    #[error("source CID {got} is not the guest's CID {want}")]
    WrongSourceCid { got: u64, want: u64 },
    #[error("destination CID {0} is not the host")]
    NotForHost(u64),
    #[error("socket type {0} is not a stream")]
    NotStream(u16),
}

/// Checks a header the guest sent with `avail` payload bytes after it in the chain.
pub fn validate(h: &Header, avail: usize, guest_cid: u64) -> Result<(), PacketError> {
    let (len, src, dst, ty) = (h.len, h.src_cid, h.dst_cid, h.type_);
    if len as usize > super::defs::MAX_PKT_PAYLOAD {
        return Err(PacketError::TooLong(len));
    }
    if len as usize > avail {
        return Err(PacketError::LengthBeyondChain { len, avail });
    }
    if src != guest_cid {
        return Err(PacketError::WrongSourceCid {
            got: src,
            want: guest_cid,
        });
    }
    if dst != super::defs::HOST_CID {
        return Err(PacketError::NotForHost(dst));
    }
    if ty != TYPE_STREAM {
        return Err(PacketError::NotStream(ty));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            type_: TYPE_STREAM,
            op: OP_RW,
            len: 10,
            ..Default::default()
        }
    }

    #[test]
    fn header_is_44_bytes() {
        assert_eq!(std::mem::size_of::<Header>(), HEADER_LEN);
    }

    #[test]
    fn validation_rejects_each_lie() {
        assert_eq!(validate(&good(), 10, 3), Ok(()));
        assert!(matches!(
            validate(&good(), 9, 3),
            Err(PacketError::LengthBeyondChain { .. })
        ));
        assert!(matches!(
            validate(&good(), 10, 4),
            Err(PacketError::WrongSourceCid { .. })
        ));
        let mut h = good();
        h.dst_cid = 7;
        assert_eq!(validate(&h, 10, 3), Err(PacketError::NotForHost(7)));
        h = good();
        h.type_ = 2;
        assert_eq!(validate(&h, 10, 3), Err(PacketError::NotStream(2)));
        h = good();
        h.len = u32::MAX;
        assert_eq!(
            validate(&h, usize::MAX, 3),
            Err(PacketError::TooLong(u32::MAX))
        );
    }
}
