//! Unit tests of the script parser.
use super::*;

#[test]
fn expressions() {
    let e = parse_expr("IOMMU_IOAS_MAP_READABLE|IOMMU_IOAS_MAP_WRITEABLE").unwrap();
    assert_eq!(eval(&e, &|_| Err("x".into())).unwrap(), 6);
    let e = parse_expr("$iova+0x1000").unwrap();
    let v = eval(&e, &|t| match t {
        Term::Var(v) if v == "iova" => Ok(0x10000),
        _ => Err("?".into()),
    });
    assert_eq!(v.unwrap(), 0x11000);
    assert_eq!(
        eval(&parse_expr("-1").unwrap(), &|_| Ok(0)).unwrap(),
        u64::MAX
    );
    assert!(parse_expr("FOO").unwrap_err().contains("FOO"));
    assert!(parse_expr("1+").is_err());
}

#[test]
fn object_fd_steps() {
    let text = "{\"ioctl\":\"IOMMU_FAULT_QUEUE_ALLOC\",\"save\":{\"f\":\"out_fault_id\"},\"as\":{\"q\":\"out_fault_fd\"}}\n\
                {\"fd_read\":\"q\",\"hex\":\"0102\",\"expect\":\"any\"}\n\
                {\"fd_write\":\"q\",\"hex\":\"0100000000000000\",\"ret\":8}\n\
                {\"ioctl\":\"IOMMU_TEST_CMD\",\"as\":{\"buf\":\"ret\"}}\n";
    let steps = parse(text).unwrap();
    let Action::Ioctl(io) = &steps[0].action else {
        panic!("not an ioctl")
    };
    assert_eq!(io.fds, vec![("q".to_string(), "out_fault_fd".to_string())]);
    let Action::FdRead(r) = &steps[1].action else {
        panic!("not a read")
    };
    // Without a size, the expected bytes say how many to read.
    assert_eq!((r.fd.as_str(), r.size, r.expect), ("q", 2, Expect::Any));
    let Action::FdWrite(w) = &steps[2].action else {
        panic!("not a write")
    };
    assert_eq!(w.hex.as_deref(), Some(&[1, 0, 0, 0, 0, 0, 0, 0][..]));
    assert_eq!(w.ret, Some(Expr::num(8)));
    let Action::Ioctl(io) = &steps[3].action else {
        panic!("not an ioctl")
    };
    assert_eq!(io.fds, vec![("buf".to_string(), "ret".to_string())]);
}

#[test]
fn errors_name_the_line() {
    let text = "# c\n{\"open\":\"iommu\"}\n{\"ioctl\":\"IOMMU_IOAS_MAP\",\"args\":{\"flagz\":1}}\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.line, 3);
    assert!(e.msg.contains("flagz"), "{e}");
    for bad in [
        "{",
        "[1]",
        "{\"ioctl\":\"NOPE\"}",
        "{\"open\":\"iommu\",\"close\":\"fd\"}",
        "{\"buffer\":\"b\"}",
        "{\"ioctl\":\"IOMMU_DESTROY\",\"expect\":\"EWHAT\"}",
        "{\"ioctl\":\"VFIO_SET_IOMMU\",\"args\":{\"x\":1}}",
        "{\"ioctl\":\"IOMMU_DESTROY\",\"trailing\":\"0\"}",
        "{\"ioctl\":\"IOMMU_IOAS_ALLOW_IOVAS\",\"args\":{\"allowed_iovas\":[{\"start\":1}]}}",
        "{\"ioctl\":\"IOMMU_DESTROY\",\"save\":{\"x\":\"nope\"}}",
        "{\"ioctl\":\"IOMMU_DESTROY\",\"args\":{\"id\":\"$\"}}",
        "{\"set\":{\"a\":null}}",
        "{\"ioctl\":\"IOMMU_FAULT_QUEUE_ALLOC\",\"as\":{\"q\":\"out_fault_id\"}}",
        "{\"ioctl\":\"IOMMU_FAULT_QUEUE_ALLOC\",\"as\":\"q\"}",
        "{\"fd_read\":\"q\"}",
        "{\"fd_read\":\"q\",\"size\":1000000}",
        "{\"fd_write\":\"q\",\"size\":8}",
        "{\"fd_write\":\"q\"}",
        "{\"fd_write\":\"q\",\"hex\":\"0\"}",
    ] {
        let e = parse(bad).unwrap_err();
        assert_eq!(e.line, 1, "{bad}: {e}");
    }
}
